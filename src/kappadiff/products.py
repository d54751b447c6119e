"""All product I/O: FITS images and tables, HEALPix maps, WCS headers, provenance.

Every writer is atomic: the data go to a temporary file beside the target, which is
renamed over the target only once complete, so a killed job never leaves a product that
looks finished. FITS products carry CHECKSUM/DATASUM and the provenance cards of
:func:`provenance` (package version, config hash, seed, model hash).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from . import __version__
from .config import config_hash
from .errors import KappadiffInputError

__all__ = [
    "CATALOGUE_CARDS",
    "ProductError",
    "atomic_output",
    "catalogue_identity",
    "celestial_wcs",
    "check_same_catalogue",
    "check_values",
    "file_hash",
    "image_hdu",
    "load_npy",
    "open_fits",
    "patch_identity",
    "provenance",
    "read_healpix",
    "read_images",
    "read_samples",
    "read_stack",
    "read_table",
    "save_figure",
    "save_npy",
    "table_hdu",
    "tan_header",
    "write_fits",
    "write_healpix",
    "write_table",
]

HEALPIX_ORDERING = "RING"
HEALPIX_COORDSYS = "C"

#: Largest |value| accepted in a shear (G1, G2), shear-noise (SIGMA) or κ input. A pixel's mean
#: shear of galaxies with |e| <= 1 stays below ~1.5 after response correction and its σ below
#: ~1; κ of a source bin reaches O(1) only in cluster cores. 10 is far above all of them, and
#: far below what one flipped exponent bit of a float32 makes of such a value (~1e36).
ABSURD_VALUE = 10.0


class ProductError(KappadiffInputError):
    """A product file is missing something it must hold; the message names file and key."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the block raises, so ``path`` either holds a
    complete product or does not exist (or keeps its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600; products get the permissions of any new file (umask applied)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file's bytes (first ``length`` hex digits), e.g. a model checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def provenance(
    config: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    model_hash: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Header cards recording how a product was made.

    Returns a mapping of FITS keyword to value: ``KDVERS`` (package version), ``CFGHASH``
    (hash of the configuration), ``SEED``, ``MODHASH`` (checkpoint hash) and ``DATE``,
    followed by ``extra`` (keywords upper-cased; values must be FITS-representable).
    """
    cards: dict[str, Any] = {"KDVERS": __version__}
    if config is not None:
        cards["CFGHASH"] = config_hash(config)
    if seed is not None:
        cards["SEED"] = int(seed)
    if model_hash is not None:
        cards["MODHASH"] = model_hash
    cards["DATE"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for key, value in extra.items():
        cards[key.upper()] = value
    return cards


def _fill(header: fits.Header, cards: Mapping[str, Any] | None) -> fits.Header:
    for key, value in (cards or {}).items():
        if isinstance(value, np.generic):
            value = value.item()
        # long strings (paths) go through astropy's CONTINUE convention
        header[key] = value
    return header


def tan_header(ra_deg: float, dec_deg: float, npix: int, pixel_scale_arcmin: float) -> fits.Header:
    """Gnomonic (TAN) WCS of a square patch, oriented as DS9 shows the sky.

    Array index ``[row, col]``: row grows with Dec (north up), col grows toward
    decreasing RA (east left), so ``CDELT1 < 0`` and ``CDELT2 > 0``. The reference
    pixel is the patch centre, ``CRPIX = (npix + 1) / 2`` in FITS' 1-based pixels.
    Leading array axes (bin, sample) are not described (``WCSAXES = 2``).
    """
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = float(ra_deg) % 360.0
    h["CRVAL2"] = float(dec_deg)
    h["CRPIX1"] = (npix + 1) / 2.0
    h["CRPIX2"] = (npix + 1) / 2.0
    h["CDELT1"] = -pixel_scale_arcmin / 60.0
    h["CDELT2"] = pixel_scale_arcmin / 60.0
    h["RADESYS"] = "ICRS"
    return h


#: WCS cards every flat product carries (those of :func:`tan_header`).
WCS_KEYS = (
    "WCSAXES",
    "CTYPE1",
    "CTYPE2",
    "CUNIT1",
    "CUNIT2",
    "CRVAL1",
    "CRVAL2",
    "CRPIX1",
    "CRPIX2",
    "CDELT1",
    "CDELT2",
    "RADESYS",
)
#: WCS cards copied along when present (a header written by other software).
WCS_OPTIONAL_KEYS = ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "LONPOLE", "LATPOLE", "EQUINOX")


def celestial_wcs(header: fits.Header, path: str | os.PathLike = "<header>") -> fits.Header:
    """The TAN WCS cards of a flat product's image header, to copy onto derived products.

    Raises :class:`ProductError` naming ``path`` and the missing cards if any of
    :data:`WCS_KEYS` is absent.
    """
    absent = [k for k in WCS_KEYS if k not in header]
    if absent:
        raise ProductError(f"{path}: image header lacks the WCS cards {absent}")
    keys = WCS_KEYS + tuple(k for k in WCS_OPTIONAL_KEYS if k in header)
    return fits.Header([(k, header[k], header.comments[k]) for k in keys])


def image_hdu(
    name: str,
    data: np.ndarray,
    header: fits.Header | Mapping[str, Any] | None = None,
    dtype: Any = np.float32,
) -> fits.ImageHDU:
    """An image extension named ``name`` holding ``data`` cast to ``dtype``."""
    hdr = header.copy() if isinstance(header, fits.Header) else _fill(fits.Header(), header)
    return fits.ImageHDU(np.ascontiguousarray(data, dtype=dtype), header=hdr, name=name)


def write_fits(
    path: str | os.PathLike,
    hdus: Sequence[fits.ImageHDU | fits.BinTableHDU],
    primary_header: fits.Header | Mapping[str, Any] | None = None,
) -> Path:
    """Write an empty primary HDU (with ``primary_header``) followed by ``hdus``, atomically.

    The primary header also records the number of extensions (``NEXTEND``), which
    :func:`open_fits` checks.
    """
    prim = fits.PrimaryHDU(
        header=primary_header.copy()
        if isinstance(primary_header, fits.Header)
        else _fill(fits.Header(), primary_header)
    )
    # lets a reader tell a file cut at an HDU boundary from a whole one (open_fits)
    prim.header["NEXTEND"] = (len(hdus), "number of extensions")
    with atomic_output(path) as tmp:
        fits.HDUList([prim, *hdus]).writeto(tmp, overwrite=True, checksum=True)
    return Path(path)


@contextlib.contextmanager
def open_fits(
    path: str | os.PathLike, memmap: bool = False, verify: Sequence[str] | None = None
) -> Iterator[fits.HDUList]:
    """Open a FITS file after checking that it is whole and unaltered; yields its HDU list.

    Every reader of a FITS product (or of a user's FITS file) opens it here, so a damaged
    file is reported with its name rather than failing later with a message that names none.
    ``verify`` names the HDUs whose checksums are verified besides the primary (a reader of
    a posterior's MEAN need not read its SAMPLES); None: all.

    Raises
    ------
    ProductError
        Naming the file: empty, not FITS, shorter than the size its headers describe (both
        sizes given), fewer extensions than its ``NEXTEND`` card lists (a file cut at an HDU
        boundary), or an HDU, named, whose data or header disagree with its ``DATASUM`` /
        ``CHECKSUM`` cards. HDUs without those cards (files written by other software) are
        not checked against them.
    FileNotFoundError
        If ``path`` does not exist (the message names it).
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ProductError(f"{path}: empty file (0 bytes), not FITS; rebuild it")
    with warnings.catch_warnings():
        # astropy's "File may have been truncated" names no file: the size check below
        # reports it with the file and both sizes
        warnings.filterwarnings("ignore", "File may have been truncated", AstropyUserWarning)
        hdul = None
        try:
            hdul = fits.open(path, memmap=memmap)
            hdul.readall()
        except (OSError, ValueError, TypeError) as err:
            if hdul is not None:
                hdul.close()
            raise ProductError(f"{path}: not a readable FITS file ({size} bytes): {err}") from err
    with hdul:
        described = max(h.fileinfo()["datLoc"] + h.fileinfo()["datSpan"] for h in hdul)
        if size < described:
            raise ProductError(
                f"{path}: truncated: {size} bytes, its headers describe {described}; rebuild it"
            )
        nextend = hdul[0].header.get("NEXTEND")
        if isinstance(nextend, int) and len(hdul) - 1 < nextend:
            raise ProductError(
                f"{path}: truncated: {len(hdul) - 1} of the {nextend} extensions its header "
                f"lists (NEXTEND) in {size} bytes; rebuild it"
            )
        names = None if verify is None else {"PRIMARY", *(n.upper() for n in verify)}
        for i, hdu in enumerate(hdul):
            if names is not None and hdu.name not in names:
                continue
            if hdu.verify_datasum() == 0 or hdu.verify_checksum() == 0:
                raise ProductError(
                    f"{path}: HDU {hdu.name or i} (#{i}) does not match its DATASUM/CHECKSUM "
                    "cards: the file was altered or damaged after it was written; rebuild it"
                )
        yield hdul


def check_values(
    path: str | os.PathLike,
    hdu: str,
    values: np.ndarray,
    where: np.ndarray | None = None,
    limit: float = ABSURD_VALUE,
) -> None:
    """Check that ``values`` (where ``where`` is true; default everywhere) are finite and small.

    ``limit`` bounds ``|values|`` (default :data:`ABSURD_VALUE`, for shear, σ and κ).
    Raises :class:`ProductError` naming the file, the HDU and the count of bad pixels.
    """
    values = np.asarray(values)
    sel = np.ones(values.shape, bool) if where is None else np.asarray(where, bool)
    finite = np.isfinite(values)
    bad = sel & ~finite
    if bad.any():
        raise ProductError(f"{path}: HDU {hdu} has {int(bad.sum())} non-finite pixels")
    absurd = sel & finite & (np.abs(values) > limit)
    if absurd.any():
        raise ProductError(
            f"{path}: HDU {hdu} has {int(absurd.sum())} pixels with |value| > {limit:g} "
            f"(up to {np.max(np.abs(values[absurd])):.3g}), impossible for shear or convergence"
        )


def read_images(
    path: str | os.PathLike, names: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], fits.Header]:
    """Read image extensions by name; returns ``({name: array}, primary header)``.

    Raises :class:`ProductError` naming the file and the missing extension.
    """
    out: dict[str, np.ndarray] = {}
    with open_fits(path, verify=names) as hdul:
        available = [h.name for h in hdul[1:]]
        wanted = available if names is None else list(names)
        for name in wanted:
            if name.upper() not in available:
                raise ProductError(f"{path}: no HDU '{name}' (found {available})")
            out[name] = np.asarray(hdul[name.upper()].data)
        header = hdul[0].header.copy()
        if wanted:
            # the first image's WCS travels with the primary cards for convenience
            for key in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2"):
                if key in hdul[wanted[0].upper()].header and key not in header:
                    header[key] = hdul[wanted[0].upper()].header[key]
    return out, header


def read_stack(paths: Sequence[str | os.PathLike], hdu: str) -> np.ndarray:
    """HDU ``hdu`` of each file, as float64, stacked along a new first axis (one per file)."""
    return np.stack([read_images(p, [hdu])[0][hdu].astype(np.float64) for p in paths])


def read_samples(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """SAMPLES of each posterior product, stacked as ``[sample, patch, bin, row, col]``."""
    return np.moveaxis(read_stack(paths, "SAMPLES"), 0, 1)


def table_hdu(name: str, columns: Mapping[str, np.ndarray]) -> fits.BinTableHDU:
    """A binary table HDU of equal-length columns: strings, booleans, ints, floats (as float64)."""
    cols = []
    for key, arr in columns.items():
        if arr.dtype.kind in "US":
            fmt = f"{max(1, max((len(x) for x in arr), default=1))}A"
        else:
            fmt = {"b": "L", "i": "K"}.get(arr.dtype.kind, "D")
        cols.append(fits.Column(name=key, format=fmt, array=arr))
    return fits.BinTableHDU.from_columns(cols, name=name)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG (110 dpi), atomically, and close it."""
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_table(
    path: str | os.PathLike,
    columns: Mapping[str, np.ndarray],
    header: Mapping[str, Any] | None = None,
    name: str = "TABLE",
) -> Path:
    """Write a binary table (one column per entry of ``columns``), atomically."""
    cols = []
    for key, values in columns.items():
        arr = np.asarray(values)
        fmt = {
            "i": "K",
            "u": "K",
            "f": "E" if arr.dtype.itemsize <= 4 else "D",
            "b": "L",
        }.get(arr.dtype.kind)
        if fmt is None:
            arr = arr.astype(str)
            fmt = f"{max(1, max((len(s) for s in arr), default=1))}A"
        cols.append(fits.Column(name=key, format=fmt, array=arr))
    table = fits.BinTableHDU.from_columns(cols, name=name)
    _fill(table.header, header)
    return write_fits(path, [table], primary_header=header)


def read_table(
    path: str | os.PathLike, name: str = "TABLE"
) -> tuple[dict[str, np.ndarray], fits.Header]:
    """Read a table written by :func:`write_table`: ``({column: array}, table header)``."""
    with open_fits(path) as hdul:
        if name.upper() not in [h.name for h in hdul]:
            raise ProductError(f"{path}: no table HDU '{name}'")
        hdu = hdul[name.upper()]
        data = {c: np.array(hdu.data[c]) for c in hdu.columns.names}
        return data, hdu.header.copy()


def write_healpix(
    path: str | os.PathLike,
    maps: np.ndarray,
    names: Sequence[str] | None = None,
    header: Mapping[str, Any] | None = None,
) -> Path:
    """Write HEALPix maps ``[n_map, npix]`` (RING, COORDSYS='C') as one binary table.

    Columns are named ``names`` (default BIN1..BINn); the layout is the one
    ``healpy.read_map(path, field=...)`` reads.
    """
    maps = np.atleast_2d(np.asarray(maps, dtype=np.float32))
    nside = int(round(np.sqrt(maps.shape[1] / 12)))
    if 12 * nside * nside != maps.shape[1]:
        raise ProductError(f"{path}: {maps.shape[1]} pixels is not a HEALPix map size")
    names = list(names) if names is not None else [f"BIN{i + 1}" for i in range(len(maps))]
    cols = [fits.Column(name=n, format="E", array=m) for n, m in zip(names, maps, strict=True)]
    table = fits.BinTableHDU.from_columns(cols, name="HEALPIX")
    h = table.header
    h["PIXTYPE"] = "HEALPIX"
    h["ORDERING"] = HEALPIX_ORDERING
    h["COORDSYS"] = HEALPIX_COORDSYS
    h["NSIDE"] = nside
    h["FIRSTPIX"] = 0
    h["LASTPIX"] = maps.shape[1] - 1
    h["INDXSCHM"] = "IMPLICIT"
    h["OBJECT"] = "FULLSKY"
    _fill(h, header)
    return write_fits(path, [table], primary_header=header)


def read_healpix(path: str | os.PathLike) -> tuple[np.ndarray, fits.Header]:
    """Read maps written by :func:`write_healpix`: ``(maps [n_map, npix] float32, header)``.

    Raises :class:`ProductError` if the file is not RING-ordered equatorial HEALPix.
    """
    with open_fits(path, memmap=True) as hdul:
        if len(hdul) < 2:
            raise ProductError(f"{path}: no HEALPix table extension")
        hdu = hdul[1]
        h = hdu.header
        if h.get("PIXTYPE") != "HEALPIX":
            raise ProductError(f"{path}: PIXTYPE is {h.get('PIXTYPE')!r}, not 'HEALPIX'")
        if h.get("ORDERING") != HEALPIX_ORDERING:
            raise ProductError(f"{path}: ORDERING is {h.get('ORDERING')!r}, expected RING")
        if h.get("COORDSYS", HEALPIX_COORDSYS) != HEALPIX_COORDSYS:
            raise ProductError(f"{path}: COORDSYS is {h.get('COORDSYS')!r}, expected 'C'")
        maps = np.stack([np.asarray(hdu.data[c], dtype=np.float32) for c in hdu.columns.names])
        return maps, h.copy()


def load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> Any:
    """``np.load`` of an .npy or .npz product (no pickles), with errors that name the file.

    An .npy file is first checked against the size its header describes, so a file cut
    short is reported with both sizes (``np.load`` says only "mmap length is greater than
    file size" or "cannot reshape array").

    Raises
    ------
    ProductError
        Naming the file: empty, cut short, or not readable as .npy / .npz.
    FileNotFoundError
        If ``path`` does not exist (the message names it).
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ProductError(f"{path}: empty file (0 bytes); rebuild it")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            except (OSError, ValueError) as err:
                raise ProductError(f"{path}: unreadable .npy header ({size} bytes): {err}") from err
            expected = f.tell() + math.prod(shape) * dtype.itemsize
            if size < expected:
                raise ProductError(
                    f"{path}: truncated: {size} bytes, its header describes {dtype} "
                    f"{list(shape)} in {expected} bytes; rebuild it"
                )
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ProductError(f"{path}: not a readable .npy/.npz file ({size} bytes): {err}") from err


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save an array as .npy atomically (memory-mappable with ``np.load(mmap_mode='r')``)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


# --------------------------------------------------------------------------- catalogue identity

#: Primary-header cards naming the catalogue a patch product descends from: the source
#: (mock, desy3, fits), its file, and a hash of its columns (``CATHASH``).
CATALOGUE_CARDS = ("SOURCE", "CATALOG", "CATHASH")


def catalogue_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The :data:`CATALOGUE_CARDS` of a product's primary header, to copy onto what it makes.

    Raises
    ------
    ProductError
        If the header lacks ``CATHASH`` (a product from before catalogue provenance, or not a
        patch product): rebuild it.
    """
    header = fits.getheader(path, 0)
    if "CATHASH" not in header:
        raise ProductError(
            f"{path}: no CATHASH card, so the catalogue it was made from is unknown; "
            "rebuild it (e.g. snakemake --forcerun pixelise pixelise_mocks)"
        )
    return {key: header.get(key, "") for key in CATALOGUE_CARDS}


def patch_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The patch id (``PATCHID``) and catalogue identity of a patch product, to copy onto
    what is made from it; the id is left out when the product has none."""
    header = fits.getheader(path, 0)
    cards = {"PATCHID": int(header["PATCHID"])} if "PATCHID" in header else {}
    return {**cards, **catalogue_identity(path)}


def check_same_catalogue(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Check that products descend from one catalogue; return its identity.

    Reads only the primary headers. The products of two catalogues (a change of
    ``catalogue.source`` or of the catalogue's content) are never combined.

    Raises
    ------
    ProductError
        Naming the first file that differs from the first file, and both identities.
    """
    first = reference = None
    for path in paths:
        identity = catalogue_identity(path)
        if reference is None:
            first, reference = path, identity
        elif identity != reference:
            raise ProductError(
                f"{path} was made from catalogue {identity} but {first} from {reference}: "
                "products of two catalogues cannot be combined; rerun the workflow so that "
                "every product descends from the configured catalogue"
            )
    return reference or {}
