"""Readers and writers of shear catalogues, streamed in chunks.

- DES-Y3 public shape catalogue as released (HDF5): ``DESY3_metacal_v03-004.h5``
  (``catalog/unsheared/*``, ``catalog/sheared_{1p,1m,2p,2m}/*``), ``DESY3_indexcat.h5``
  (``index/select``, ``index/select_1p`` ...: row indices into the metacal catalogue) and
  ``DESY3_sompz_v0.50.h5`` (``catalog/sompz/{unsheared,sheared_1p,...}/bhat``, the
  tomographic bin 0..3 of every metacal row, -1 for none).
- Plain FITS catalogues with a column map (``catalogue.fits.columns`` of the config), read
  with fitsio.
- The mock catalogue, written as a FITS table (streamed) and, at small sizes, in the DES
  HDF5 layout so that the DES reader runs end to end.
- The pixelised data patches (:func:`read_data_patch`), read and checked for the stages
  that reconstruct from them.

Every reader yields :class:`kappadiff.catalogue.GalaxyChunk` of at most ``chunk_size``
galaxies, so memory does not grow with the catalogue. Errors name the file and the column or
dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fitsio
import h5py
import numpy as np
from astropy.io import fits

from ..products import ProductError, atomic_output, celestial_wcs, check_values, open_fits
from .cuts import BinErrors, CatalogueError, GalaxyChunk, check_radians, quality_cut_chunks
from .responses import SHEARED_SELECTIONS, ResponseSums

#: Image HDUs of a data patch that the reconstructions read (NGAL is informative only).
DATA_HDUS = ("G1", "G2", "SIGMA", "MASK")

__all__ = [
    "DATA_HDUS",
    "read_data_patch",
    "DESY3Files",
    "FITS_COLUMNS",
    "desy3_response_sums",
    "fits_response_sums",
    "iter_desy3_catalogue",
    "iter_fits_catalogue",
    "write_desy3_catalogue",
    "write_fits_catalogue",
]

log = logging.getLogger(__name__)

#: Columns of the catalogue tables this package writes (and the default column map).
FITS_COLUMNS = ("ra", "dec", "e1", "e2", "weight", "bin")
#: Metacal responses of the unsheared catalogue, in [i, j] order.
_RESPONSE = (("R11", "R12"), ("R21", "R22"))
#: The three files of a DES-Y3 catalogue (attributes of :class:`DESY3Files`).
_DESY3_ROLES = ("metacal", "index", "sompz")


class DESY3Files:
    """The three DES-Y3 HDF5 files that make a shape catalogue.

    Parameters
    ----------
    metacal, index, sompz
        Paths of ``DESY3_metacal_v03-004.h5``, ``DESY3_indexcat.h5``, ``DESY3_sompz_v0.50.h5``
        (or files in the same layout).
    """

    def __init__(
        self, metacal: str | os.PathLike, index: str | os.PathLike, sompz: str | os.PathLike
    ) -> None:
        self.metacal, self.index, self.sompz = (
            os.fspath(metacal),
            os.fspath(index),
            os.fspath(sompz),
        )

    def __repr__(self) -> str:
        return f"DESY3Files({self.metacal!r}, {self.index!r}, {self.sompz!r})"


# --------------------------------------------------------------------------- DES-Y3 HDF5


def _reason(err: Exception) -> str:
    """A library's error message on one line (fitsio's span several)."""
    return " ".join(str(err).split())


def _open_hdf5(path: str, role: str) -> h5py.File:
    """Open a DES-Y3 HDF5 file; a file HDF5 cannot open (truncated, not HDF5) is named."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CatalogueError(
            f"{path}: cannot open the DES-Y3 {role} file as HDF5 ({_reason(err)})"
        ) from err


def _read(ds: h5py.Dataset, key: slice | np.ndarray) -> np.ndarray:
    """``ds[key]``; a read error (e.g. a corrupt compressed chunk) names file and dataset."""
    try:
        return ds[key]
    except OSError as err:
        raise CatalogueError(
            f"{ds.file.filename}: cannot read '{ds.name}' ({_reason(err)})"
        ) from err


def _dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset:
    if path not in f:
        raise CatalogueError(f"{f.filename}: no dataset '{path}' ({name})")
    ds = f[path]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
        raise CatalogueError(f"{f.filename}: '{path}' is not a 1-d dataset")
    return ds


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for increasing ``rows``: one contiguous read where the rows are dense."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * rows.size + 4096:
        return _read(ds, slice(lo, hi))[rows - lo]
    return _read(ds, rows)


def _check_rows(rows: np.ndarray, n_rows: int, files: DESY3Files, dataset: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    bad = (rows < 0) | (rows >= n_rows)
    if bad.any():
        raise CatalogueError(
            f"{files.index}: '{dataset}' has {int(bad.sum())} row indices outside "
            f"0..{n_rows - 1} of the metacal catalogue {files.metacal}"
        )
    if rows.size > 1 and np.any(np.diff(rows) <= 0):
        rows = np.sort(rows)
        if np.any(np.diff(rows) == 0):
            n_dup = int(np.count_nonzero(np.diff(rows) == 0))
            raise CatalogueError(f"{files.index}: '{dataset}' repeats {n_dup} row indices")
    return rows


class _DESY3:
    """Open DES-Y3 files with their datasets checked for presence and matching lengths."""

    def __init__(self, files: DESY3Files) -> None:
        self.files = files
        for path in (files.metacal, files.index, files.sompz):
            if not os.path.isfile(path):
                raise CatalogueError(f"{path}: DES-Y3 catalogue file not found")
        opened: list[h5py.File] = []
        try:
            for role in _DESY3_ROLES:
                opened.append(_open_hdf5(getattr(files, role), role))
        except CatalogueError:
            for f in opened:
                f.close()
            raise
        self.mcal, self.idx, self.som = opened
        ra = _dataset(self.mcal, "catalog/unsheared/ra", "RA")
        self.n_rows = ra.shape[0]
        if self.n_rows == 0:
            raise CatalogueError(f"{files.metacal}: 'catalog/unsheared/ra' is empty")
        for name in ("dec", "e_1", "e_2", "weight", *(r for row in _RESPONSE for r in row)):
            self.column("unsheared", name)
        for sel in ("unsheared", *(f"sheared_{s}" for s in SHEARED_SELECTIONS)):
            self.bhat(sel)
        for s in SHEARED_SELECTIONS:
            self.column(f"sheared_{s}", "weight")

    def _length(self, ds: h5py.Dataset, f: h5py.File) -> h5py.Dataset:
        if ds.shape[0] != self.n_rows:
            raise CatalogueError(
                f"{f.filename}: '{ds.name}' has {ds.shape[0]} rows but "
                f"{self.files.metacal} 'catalog/unsheared/ra' has {self.n_rows}"
            )
        return ds

    def column(self, group: str, name: str) -> h5py.Dataset:
        return self._length(_dataset(self.mcal, f"catalog/{group}/{name}", name), self.mcal)

    def bhat(self, group: str) -> h5py.Dataset:
        ds = _dataset(self.som, f"catalog/sompz/{group}/bhat", "tomographic bin")
        return self._length(ds, self.som)

    def select(self, suffix: str = "") -> h5py.Dataset:
        name = f"index/select{suffix}"
        ds = _dataset(self.idx, name, "selection")
        if ds.shape[0] == 0:
            raise CatalogueError(f"{self.files.index}: '{name}' selects no galaxy")
        return ds

    def close(self) -> None:
        for f in (self.mcal, self.idx, self.som):
            f.close()

    def __enter__(self) -> _DESY3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_desy3_catalogue(files: DESY3Files, chunk_size: int = 1_000_000) -> Iterator[GalaxyChunk]:
    """The selected (``index/select``) galaxies of a DES-Y3 catalogue, chunk by chunk.

    Each chunk carries the per-galaxy metacal response ``R_gamma`` [n, 2, 2] and the bin
    of ``catalog/sompz/unsheared/bhat`` (0-based, -1 for none).

    Raises
    ------
    CatalogueError
        A missing file or dataset, datasets of different lengths, an empty selection,
        indices out of range or repeated (each named with file and dataset).
    """
    with _DESY3(files) as cat:
        select = cat.select()
        cols = {k: cat.column("unsheared", k) for k in ("ra", "dec", "e_1", "e_2", "weight")}
        resp = [[cat.column("unsheared", r) for r in row] for row in _RESPONSE]
        bhat = cat.bhat("unsheared")
        for start in range(0, select.shape[0], chunk_size):
            rows = _check_rows(
                _read(select, slice(start, start + chunk_size)), cat.n_rows, files, "index/select"
            )
            data = {k: _read_rows(ds, rows).astype(np.float64) for k, ds in cols.items()}
            if start == 0:
                check_radians(data["ra"], data["dec"], f"{files.metacal} catalog/unsheared/ra,dec")
            r = np.empty((rows.size, 2, 2))
            for i in range(2):
                for j in range(2):
                    r[:, i, j] = _read_rows(resp[i][j], rows)
            yield GalaxyChunk(
                data["ra"],
                data["dec"],
                data["e_1"],
                data["e_2"],
                data["weight"],
                _read_rows(bhat, rows).astype(np.int64),
                r,
            )


def desy3_response_sums(
    files: DESY3Files, n_bins: int, e_max: float, chunk_size: int = 1_000_000
) -> ResponseSums:
    """Per-bin sums for the metacalibration response of a DES-Y3 catalogue (first pass).

    The unsheared selection contributes the weighted R_gamma and mean ellipticity of the
    galaxies passing :func:`kappadiff.catalogue.quality_cuts`; each sheared selection
    ``index/select_{1p,1m,2p,2m}`` contributes the weighted mean of the *unsheared*
    ellipticities, with the bins of ``catalog/sompz/sheared_*/bhat`` and the weights of
    ``catalog/sheared_*/weight`` (Sheldon & Huff 2017; Gatti et al. 2021, sec. 4).
    """
    sums = ResponseSums(n_bins)
    chunks = iter_desy3_catalogue(files, chunk_size)
    for chunk, keep, _ in quality_cut_chunks(chunks, n_bins, e_max, files.metacal):
        sums.add(chunk.subset(keep))
    with _DESY3(files) as cat:
        e1, e2 = cat.column("unsheared", "e_1"), cat.column("unsheared", "e_2")
        for s in SHEARED_SELECTIONS:
            select = cat.select(f"_{s}")
            weight, bhat = cat.column(f"sheared_{s}", "weight"), cat.bhat(f"sheared_{s}")
            # counted over the whole selection, raised after it (the bins are int64)
            bad = BinErrors(n_bins, f"catalog/sompz/sheared_{s}/bhat")
            for start in range(0, select.shape[0], chunk_size):
                rows = _check_rows(
                    _read(select, slice(start, start + chunk_size)),
                    cat.n_rows,
                    files,
                    f"index/select_{s}",
                )
                bins = _read_rows(bhat, rows).astype(np.int64)
                wrong = (bins < -1) | (bins >= n_bins)
                bad.rows += bins.size
                if wrong.any():
                    bad.add(bins[wrong])
                    continue
                sums.add_selection(
                    s,
                    bins,
                    _read_rows(weight, rows).astype(np.float64),
                    _read_rows(e1, rows).astype(np.float64),
                    _read_rows(e2, rows).astype(np.float64),
                )
            bad.check(files.sompz)
    return sums


def write_desy3_catalogue(
    files: DESY3Files,
    columns: Mapping[str, np.ndarray],
    sheared: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    select: Mapping[str, np.ndarray] | None = None,
    header: Mapping[str, Any] | None = None,
) -> None:
    """Write a catalogue held in memory in the DES-Y3 HDF5 layout (small sizes: tests, mocks).

    Parameters
    ----------
    files
        Target paths (each written atomically).
    columns
        Unsheared ``ra, dec, e1, e2, weight, bin`` and optionally ``R11, R12, R21, R22``
        (default: unit response), all of length n.
    sheared
        Per sheared catalogue (``"1p"`` ...) its ``e1, e2, weight, bin``; default: copies of
        the unsheared ones (no selection response).
    select
        Row indices per selection (``""`` for ``index/select``, ``"_1p"`` ...); default: every
        row with a bin in every selection.
    header
        Attributes set on the root of each file (provenance, TRUTH).
    """
    n = len(columns["ra"])
    ones, zeros = np.ones(n), np.zeros(n)
    default_sel = np.flatnonzero(np.asarray(columns["bin"]) >= 0)
    sheared = sheared or {}
    select = select or {}

    def attrs(f: h5py.File) -> None:
        for key, value in (header or {}).items():
            f.attrs[key] = value

    with atomic_output(files.metacal) as tmp, h5py.File(tmp, "w") as f:
        attrs(f)
        g = f.create_group("catalog/unsheared")
        for name, key in (("ra", "ra"), ("dec", "dec"), ("e_1", "e1"), ("e_2", "e2")):
            g[name] = np.asarray(columns[key], dtype=np.float64)
        g["weight"] = np.asarray(columns["weight"], dtype=np.float64)
        for name, default in (("R11", ones), ("R12", zeros), ("R21", zeros), ("R22", ones)):
            g[name] = np.asarray(columns.get(name, default), dtype=np.float64)
        for s in SHEARED_SELECTIONS:
            sh = sheared.get(s, columns)
            gs = f.create_group(f"catalog/sheared_{s}")
            gs["e_1"] = np.asarray(sh["e1"], dtype=np.float64)
            gs["e_2"] = np.asarray(sh["e2"], dtype=np.float64)
            gs["weight"] = np.asarray(sh["weight"], dtype=np.float64)
    with atomic_output(files.index) as tmp, h5py.File(tmp, "w") as f:
        attrs(f)
        for suffix in ("", *(f"_{s}" for s in SHEARED_SELECTIONS)):
            f[f"index/select{suffix}"] = np.asarray(select.get(suffix, default_sel), dtype=np.int64)
    with atomic_output(files.sompz) as tmp, h5py.File(tmp, "w") as f:
        attrs(f)
        f["catalog/sompz/unsheared/bhat"] = np.asarray(columns["bin"], dtype=np.int64)
        for s in SHEARED_SELECTIONS:
            sh = sheared.get(s, columns)
            f[f"catalog/sompz/sheared_{s}/bhat"] = np.asarray(sh["bin"], dtype=np.int64)


# --------------------------------------------------------------------------- FITS catalogues


def _fits_hdu(f: fitsio.FITS, path: str, ext: int | str) -> fitsio.hdu.TableHDU:
    try:
        hdu = f[ext]
    except (OSError, ValueError, IndexError) as err:
        raise CatalogueError(f"{path}: no table extension {ext!r} ({err})") from err
    if not hasattr(hdu, "get_colnames"):
        raise CatalogueError(f"{path}: extension {ext!r} is not a table")
    return hdu


def iter_fits_catalogue(
    path: str | os.PathLike,
    columns: Mapping[str, str | None] | None = None,
    chunk_size: int = 1_000_000,
    radec_units: str = "deg",
    extension: int | str = 1,
) -> Iterator[GalaxyChunk]:
    """A FITS table catalogue, chunk by chunk (fitsio reads only the mapped columns).

    Parameters
    ----------
    path
        FITS file.
    columns
        Column map: keys ``ra, dec, e1, e2, bin`` (required), ``weight`` and ``response``
        (optional: None or absent means unit weights / no response); values are the
        column names in the file. Default: the names this package writes.
    chunk_size
        Rows per chunk.
    radec_units
        ``"deg"`` or ``"rad"`` (converted to degrees).
    extension
        Table HDU (number or name).

    Raises
    ------
    CatalogueError
        Missing file, extension or column (named with the columns found), an empty table,
        or RA/Dec that look like radians when declared in degrees.
    """
    path = os.fspath(path)
    cmap = {k: k for k in FITS_COLUMNS} if columns is None else dict(columns)
    for key in ("ra", "dec", "e1", "e2", "bin"):
        if not cmap.get(key):
            raise CatalogueError(f"{path}: the column map gives no column for '{key}'")
    if radec_units not in ("deg", "rad"):
        raise CatalogueError(f"{path}: radec_units = {radec_units!r}, not 'deg' or 'rad'")
    if not os.path.isfile(path):
        raise CatalogueError(f"{path}: catalogue file not found")
    wanted = {k: v for k, v in cmap.items() if v}
    try:
        f = fitsio.FITS(path)
    except OSError as err:
        raise CatalogueError(f"{path}: cannot open the catalogue as FITS ({_reason(err)})") from err
    with f:
        hdu = _fits_hdu(f, path, extension)
        available = hdu.get_colnames()
        lower = {c.lower(): c for c in available}
        missing = [f"{k} -> '{v}'" for k, v in wanted.items() if v.lower() not in lower]
        if missing:
            raise CatalogueError(
                f"{path}: column(s) {', '.join(missing)} not in the table (found {available})"
            )
        names = {k: lower[v.lower()] for k, v in wanted.items()}
        n_rows = hdu.get_nrows()
        if n_rows == 0:
            raise CatalogueError(f"{path}: the catalogue table is empty")
        for start in range(0, n_rows, chunk_size):
            stop = min(start + chunk_size, n_rows)
            try:
                data = hdu[list(names.values())][start:stop]
            except OSError as err:
                raise CatalogueError(
                    f"{path}: cannot read rows {start}..{stop - 1} of columns "
                    f"{list(names.values())} of extension {extension!r} ({_reason(err)})"
                ) from err
            col = {k: np.asarray(data[v]) for k, v in names.items()}
            ra = col["ra"].astype(np.float64)
            dec = col["dec"].astype(np.float64)
            if radec_units == "rad":
                ra, dec = np.degrees(ra), np.degrees(dec)
            elif start == 0:
                check_radians(ra, dec, f"{path} columns '{names['ra']}', '{names['dec']}'")
            n = ra.size
            bins = col["bin"]
            if bins.dtype.kind not in "iuf":
                raise CatalogueError(f"{path}: column '{names['bin']}' is not numeric")
            yield GalaxyChunk(
                ra,
                dec,
                col["e1"].astype(np.float64),
                col["e2"].astype(np.float64),
                col["weight"].astype(np.float64) if "weight" in col else np.ones(n),
                bins.astype(np.float64) if bins.dtype.kind == "f" else bins.astype(np.int64),
                col["response"].astype(np.float64) if "response" in col else None,
            )


def fits_response_sums(
    chunks: Iterable[GalaxyChunk], n_bins: int, e_max: float, where: str
) -> ResponseSums:
    """Per-bin sums (weighted mean response and ellipticity) of a FITS catalogue's galaxies."""
    sums = ResponseSums(n_bins)
    for chunk, keep, _ in quality_cut_chunks(chunks, n_bins, e_max, where):
        sums.add(chunk.subset(keep))
    return sums


def write_fits_catalogue(
    path: str | os.PathLike,
    chunks: Iterable[Mapping[str, np.ndarray]],
    header: Mapping[str, Any] | None = None,
) -> int:
    """Stream a galaxy table to FITS (extension CATALOGUE), atomically; returns its rows.

    Each chunk maps the column names of :data:`FITS_COLUMNS` to arrays; positions and
    shapes are stored as float64, weights float32, bins int16.
    """
    dtype = [
        ("ra", "f8"),
        ("dec", "f8"),
        ("e1", "f8"),
        ("e2", "f8"),
        ("weight", "f4"),
        ("bin", "i2"),
    ]
    n = 0
    hdr = [
        {"name": k, "value": v.item() if isinstance(v, np.generic) else v}
        for k, v in (header or {}).items()
    ]
    with atomic_output(path) as tmp:
        with fitsio.FITS(tmp, "rw", clobber=True) as f:
            written = False
            for chunk in chunks:
                rows = np.empty(len(chunk["ra"]), dtype=dtype)
                for name, _ in dtype:
                    rows[name] = chunk[name]
                if not written:
                    f.write(rows, extname="CATALOGUE", header=hdr)
                    written = True
                else:
                    f[-1].append(rows)
                n += rows.size
            if not written:
                f.write(np.empty(0, dtype=dtype), extname="CATALOGUE", header=hdr)
            f[-1].write_key("NGAL", n, "galaxies in the catalogue")
            f[-1].write_checksum()
    log.info("wrote %d galaxies to %s", n, path)
    return n


def read_data_patch(
    path: str | os.PathLike, pixel_scale_arcmin: float | None = None
) -> tuple[dict[str, np.ndarray], fits.Header]:
    """Read and check a data patch: ``({G1, G2, SIGMA, MASK: [bin, row, col]}, WCS header)``.

    The reader of the ``pixelise`` products ``results/data/patch_{id}.fits``
    (docs/architecture.md), used by the posterior and baseline stages. Arrays are float64;
    the header holds the TAN WCS cards of the G1 extension
    (:func:`kappadiff.products.celestial_wcs`).

    Parameters
    ----------
    path
        The data patch.
    pixel_scale_arcmin
        Expected pixel side (arcmin), checked against CDELT2 to 1e-6 relative; None: not
        checked.

    Raises
    ------
    ProductError
        Naming the file and HDU: a damaged file (:func:`kappadiff.products.open_fits`),
        missing HDUs, shapes that differ, a MASK other than 0/1, non-finite or absurd
        (:func:`kappadiff.products.check_values`) shear or σ, or non-positive SIGMA, in
        observed pixels, or a pixel scale that differs from the configuration's.
    """
    images: dict[str, np.ndarray] = {}
    with open_fits(path) as hdul:
        names = [h.name for h in hdul[1:]]
        missing = [n for n in DATA_HDUS if n not in names]
        if missing:
            raise ProductError(f"{path}: no HDU {missing} (found {names})")
        for name in DATA_HDUS:
            images[name] = np.asarray(hdul[name].data, dtype=np.float64)
        source = hdul["G1"].header
        wcs = celestial_wcs(source, path)
    shape = images["G1"].shape
    for name, arr in images.items():
        if arr.ndim != 3 or arr.shape != shape:
            raise ProductError(f"{path}: HDU {name} has shape {arr.shape}, G1 has {shape}")
    mask = images["MASK"]
    odd = ~np.isin(mask, (0.0, 1.0))
    if odd.any():
        raise ProductError(f"{path}: HDU MASK has {int(odd.sum())} values other than 0 and 1")
    observed = mask > 0
    for name in ("G1", "G2"):
        bad = observed & ~np.isfinite(images[name])
        if bad.any():
            raise ProductError(
                f"{path}: HDU {name} has {int(bad.sum())} non-finite observed pixels"
            )
    bad = observed & ~(images["SIGMA"] > 0)
    if bad.any():
        raise ProductError(
            f"{path}: HDU SIGMA is not > 0 (or not finite) in {int(bad.sum())} observed pixels"
        )
    for name in ("G1", "G2", "SIGMA"):
        check_values(path, name, images[name], observed)
    scale = abs(float(wcs["CDELT2"])) * 60.0
    if pixel_scale_arcmin is not None and not np.isclose(scale, pixel_scale_arcmin, rtol=1e-6):
        raise ProductError(
            f"{path}: pixel scale {scale:.6g} arcmin (CDELT2) differs from "
            f"layout.pixel_scale_arcmin = {pixel_scale_arcmin}"
        )
    log.info(
        "%s: %d bins of %d x %d px, %.1f %% of pixels observed",
        path,
        shape[0],
        shape[1],
        shape[2],
        100 * observed.mean(),
    )
    return images, wcs
