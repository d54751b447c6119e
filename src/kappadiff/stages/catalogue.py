"""Catalogue stage: the mock DES-Y3 catalogue, pixelisation into patches, occupancy footprint.

Two streams leave this stage and are never mixed:

- the *data*: ``pixelise`` reads the configured catalogue (mock, DES-Y3 HDF5 or FITS with a
  column map) once per patch group and writes the data patches (``results/data/``) and,
  for a mock catalogue, their true convergence (``results/truth/``);
- the *validation mocks*: ``pixelise_mocks`` writes ``results/mocks/data/`` and
  ``results/mocks/truth/`` on the validation patches, always from the held-out simulated
  sky. For a real catalogue each mock keeps the real galaxies (positions, weights, bins,
  responses, cuts: the survey's own mask and noise), rotates their shapes and adds the
  sky's shear (:class:`kappadiff.catalogue.ShapeNoiseMock`); for the mock catalogue the
  mocks are its own patches.

Both carry the catalogue's identity (``SOURCE``, ``CATALOG`` and ``CATHASH``, a hash of its
columns), which the rules that combine products check (:func:`kappadiff.products.
check_same_catalogue`). ``mock_catalogue`` draws the DES-Y3-like mock catalogue from the
held-out sky; ``catalogue_footprint`` makes a HEALPix occupancy mask from a catalogue.

The rules name every file (workflow/rules/common.smk); the functions here take the paths
of their inputs and outputs as given.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import healpy as hp
import numpy as np

from .. import footprint, sims, sphere
from ..catalogue import (
    Accounting,
    CatalogueError,
    GalaxyChunk,
    HashedChunks,
    PatchGrid,
    ShapeModel,
    ShapeNoiseMock,
    ShearCalibration,
    catalogue_extent,
    mock_catalogue,
    occupancy_mask,
    pixelise_catalogue,
    quality_cut_chunks,
    shear_calibration_from_sums,
)
from ..catalogue.io import (
    DESY3Files,
    desy3_response_sums,
    fits_response_sums,
    iter_desy3_catalogue,
    iter_fits_catalogue,
    write_desy3_catalogue,
    write_fits_catalogue,
)
from ..products import (
    ProductError,
    check_values,
    image_hdu,
    provenance,
    read_healpix,
    read_table,
    tan_header,
    write_fits,
    write_healpix,
)
from ..seeding import derive_seed
from ..survey import DESY3_N_BINS

__all__ = [
    "catalogue_footprint",
    "make_mock_catalogue",
    "mock_memory_mb",
    "mock_pixelise_memory_mb",
    "pixelise",
    "pixelise_memory_mb",
    "pixelise_mocks",
]

log = logging.getLogger(__name__)

_DESY3_KEYS = ("metacal", "index", "sompz")

#: Bytes per nside^2 of the 4 float32 convergence maps, one bin's float64 shear maps and its
#: spherical-harmonic transforms: the mock catalogue's peak RSS was 4.0 GB at nside 2048
#: (config/desy3_smoke.yaml), 840 nside^2 above the interpreter's 0.5 GB.
SHEAR_MAP_BYTES = 850


def mock_memory_mb(config: Mapping[str, Any]) -> int:
    """Memory (MB) of the ``mock_catalogue`` job, for the rule's ``mem_mb``.

    The 4 float32 convergence maps, one bin's float64 shear maps and its spherical-harmonic
    transforms (:data:`SHEAR_MAP_BYTES` nside^2 bytes in all), and, for the DES HDF5 layout
    written from memory, 100 bytes a galaxy; plus 30 % and 500 MB for the interpreter.
    """
    cat = config["catalogue"]
    maps = SHEAR_MAP_BYTES * config["sims"]["nside"] ** 2
    galaxies = 0
    if cat["mock_format"] == "desy3":
        wanted = config["sampling"]["patches"]
        validation = config.get("validation", {}).get("patches", [])
        n_patch = len(set(wanted) | set(validation)) if wanted != "all" else 450
        area = n_patch * (config["layout"]["patch_size_deg"] * 60) ** 2
        galaxies = 100 * area * sum(cat["n_eff"])
    return int(1.3 * (maps + galaxies) / 2**20) + 500


def pixelise_memory_mb(config: Mapping[str, Any]) -> int:
    """Memory (MB) of the ``pixelise`` job, for the rule's ``mem_mb``.

    Twice the budget (buffered records and the first group's accumulator coexist when the
    records outgrow it: :func:`kappadiff.catalogue.pixelise_catalogue`), a chunk of galaxies
    and its galaxy-patch pairs (~ 30 float64 or int64 arrays of up to 3 pairs a galaxy), the
    4 convergence maps of a mock (float32, read for the truth cut-outs) and 500 MB for the
    interpreter.
    """
    cat = config["catalogue"]
    chunk = 30 * 8 * 3 * cat["chunk_size"]
    maps = 4 * 4 * 12 * config["sims"]["nside"] ** 2 if cat["source"] == "mock" else 0
    return int(2 * cat["memory_mb"] + (chunk + maps) / 2**20) + 500


def mock_pixelise_memory_mb(config: Mapping[str, Any]) -> int:
    """Memory (MB) of the ``pixelise_mocks`` job, for the rule's ``mem_mb``.

    :func:`pixelise_memory_mb` plus, for a real catalogue, the simulated sky's shear and
    convergence (3 float32 maps a bin) and one bin's float64 transforms (as
    :func:`mock_memory_mb`).
    """
    base = pixelise_memory_mb(config)
    if config["catalogue"]["source"] == "mock":
        return base
    npix = 12 * config["sims"]["nside"] ** 2
    maps = 3 * 4 * DESY3_N_BINS * npix + SHEAR_MAP_BYTES * config["sims"]["nside"] ** 2
    return base + int(1.3 * maps / 2**20)


def _grid(config: Mapping[str, Any], layout_path: str | os.PathLike) -> tuple[PatchGrid, Any]:
    """The footprint layout table as a :class:`PatchGrid`, checked against the config."""
    table, header = read_table(layout_path)
    lay = config["layout"]
    for key in ("ra", "dec"):
        if key not in table:
            raise ProductError(f"{layout_path}: layout table has no column '{key}'")
    for card, value in (("NPIX", lay["npix"]), ("PIXSCALE", lay["pixel_scale_arcmin"])):
        if card in header and not np.isclose(header[card], value, rtol=1e-6):
            raise ProductError(
                f"{layout_path}: {card} = {header[card]} but the configuration gives {value}"
            )
    grid = PatchGrid(table["ra"], table["dec"], int(lay["npix"]), float(lay["pixel_scale_arcmin"]))
    return grid, header


def _single(value: Any) -> str | None:
    """A path given as a string or a (possibly empty) one-element list; None if absent."""
    if value is None or isinstance(value, str | os.PathLike):
        return None if value is None else os.fspath(value)
    values = list(value)
    if len(values) > 1:
        raise ValueError(f"expected one file, got {values}")
    return os.fspath(values[0]) if values else None


def _footprint(config: Mapping[str, Any]) -> np.ndarray:
    lay = config["layout"]
    return footprint.footprint_mask(lay["footprint"], lay["footprint_nside"])


# --------------------------------------------------------------------------- mock


def make_mock_catalogue(
    config: Mapping[str, Any],
    kappa_path: str | os.PathLike,
    layout_path: str | os.PathLike,
    patch_ids: Sequence[int],
    outputs: Mapping[str, str],
) -> None:
    """Draw the mock DES-Y3 catalogue of the configured patches from a simulated sky.

    Galaxies are Poisson distributed at ``catalogue.n_eff`` per bin over the union of the
    patches ``patch_ids`` inside the footprint, sheared by the sky's convergence (healpy
    spin-2 shear at each galaxy, DES sign, optionally reduced) plus Gaussian shape noise
    ``catalogue.sigma_e`` (:func:`kappadiff.catalogue.mock_catalogue`). Bins are drawn one
    after the other, so only one bin's shear maps are held in memory. Written to
    ``outputs['fits']`` and, with
    ``catalogue.mock_format: desy3``, ``outputs['metacal'|'index'|'sompz']`` (unit response,
    no selection response).
    """
    grid_all, _ = _grid(config, layout_path)
    ids = np.asarray(sorted(set(int(i) for i in patch_ids)), dtype=np.int64)
    if ids.size == 0 or ids.max() >= len(grid_all):
        raise ValueError(
            f"mock catalogue: patch ids {ids.tolist()} not in the {len(grid_all)}-patch "
            f"layout {layout_path}"
        )
    grid = grid_all.subset(ids)
    mask = _footprint(config)
    kappa, kheader = read_healpix(kappa_path)
    if len(kappa) != DESY3_N_BINS:
        raise ProductError(f"{kappa_path}: {len(kappa)} convergence maps, expected {DESY3_N_BINS}")
    check_values(kappa_path, "HEALPIX", kappa)
    cat = config["catalogue"]
    galaxies = mock_catalogue(
        kappa, grid, ids, cat["n_eff"], cat["sigma_e"], config["seed"], mask, cat["reduced_shear"]
    )
    header = _mock_header(config, kappa_path, kheader, len(ids))
    n = _write_mock_catalogue(outputs, galaxies, header)
    log.info(
        "mock catalogue: %d galaxies over %d patches of %.0f arcmin (%.2f / arcmin^2 total)",
        n,
        len(ids),
        grid.npix * grid.pixel_scale_arcmin,
        sum(cat["n_eff"]),
    )


def _mock_header(
    config: Mapping[str, Any],
    kappa_path: str | os.PathLike,
    kheader: Mapping[str, Any],
    n_patch: int,
) -> dict[str, Any]:
    """Provenance of the mock catalogue: its sky, density and shape noise per bin."""
    cat = config["catalogue"]
    return provenance(
        config,
        seed=derive_seed(config["seed"], "mock_catalogue"),
        TRUTH=os.fspath(kappa_path),
        TRUTHCFG=str(kheader.get("CFGHASH", "")),
        REDSHEAR=bool(cat["reduced_shear"]),
        NPATCH=n_patch,
        **{f"NEFF{b + 1}": float(cat["n_eff"][b]) for b in range(DESY3_N_BINS)},
        **{f"SIGE{b + 1}": float(cat["sigma_e"][b]) for b in range(DESY3_N_BINS)},
    )


def _write_mock_catalogue(
    outputs: Mapping[str, str],
    galaxies: Iterable[Mapping[str, np.ndarray]],
    header: Mapping[str, Any],
) -> int:
    """Write the galaxies to ``outputs['fits']`` (and the DES-Y3 triple if asked): their number."""
    if "metacal" not in outputs:
        return write_fits_catalogue(outputs["fits"], galaxies, header)
    # small sizes only: the DES HDF5 layout is written from memory
    parts = list(galaxies)
    columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = write_fits_catalogue(outputs["fits"], [columns], header)
    write_desy3_catalogue(
        DESY3Files(outputs["metacal"], outputs["index"], outputs["sompz"]),
        columns,
        header={k: str(v) for k, v in header.items()},
    )
    return n


# --------------------------------------------------------------------------- pixelise


def _chunk_source(
    config: Mapping[str, Any], inputs: Mapping[str, str]
) -> tuple[Callable[[], Iterable[GalaxyChunk]], str]:
    """A callable that iterates the configured catalogue's chunks, and the catalogue's name."""
    cat = config["catalogue"]
    size = cat["chunk_size"]
    if "metacal" in inputs:
        files = DESY3Files(inputs["metacal"], inputs["index"], inputs["sompz"])
        return functools.partial(iter_desy3_catalogue, files, size), files.metacal
    if cat["source"] == "fits":
        fcfg = cat["fits"]
        args = (fcfg["columns"], size, fcfg["radec_units"], fcfg["extension"])
    else:
        args = (None, size, "deg", 1)
    return functools.partial(iter_fits_catalogue, inputs["fits"], *args), inputs["fits"]


def _calibration(
    config: Mapping[str, Any],
    inputs: Mapping[str, str],
    chunks: Callable[[], Iterable[GalaxyChunk]],
    where: str,
) -> ShearCalibration:
    """Per-bin calibration: metacal response (DES-Y3), mean response column (FITS), or none."""
    cat = config["catalogue"]
    n_bins, e_max, m = DESY3_N_BINS, cat["e_max"], cat["m_bias"]
    if "metacal" in inputs:
        files = DESY3Files(inputs["metacal"], inputs["index"], inputs["sompz"])
        log.info("DES-Y3 catalogue %s: measuring the shear response", files)
        sums = desy3_response_sums(files, n_bins, e_max, cat["chunk_size"])
        return shear_calibration_from_sums(sums, m, cat["subtract_mean_shear"], where)
    has_response = cat["source"] == "fits" and bool(cat["fits"]["columns"].get("response"))
    if cat["subtract_mean_shear"] or has_response:
        sums = fits_response_sums(chunks(), n_bins, e_max, where)
        return shear_calibration_from_sums(sums, m, cat["subtract_mean_shear"], where)
    return ShearCalibration.identity(n_bins, m)


def _centres(grid: PatchGrid, ids: np.ndarray, wanted: Sequence[int], most: int = 5) -> str:
    """'patch id (RA, Dec)' of the first ``most`` of the patches ``wanted``, for messages."""
    entries = []
    for i in list(wanted)[:most]:
        k = int(np.flatnonzero(ids == i)[0])
        entries.append(f"patch {i} (RA {grid.ra0[k]:.1f}, Dec {grid.dec0[k]:.1f})")
    more = len(wanted) - most
    return ", ".join(entries) + (f" and {more} more" if more > 0 else "")


def _extent(chunks: Callable[[], Iterable[GalaxyChunk]]) -> str:
    """Where the catalogue lies, and the likely cause when no patch receives a galaxy."""
    n, ra0, ra1, dec0, dec1 = catalogue_extent(chunks())
    if n == 0:
        return "the catalogue holds no galaxy with finite RA and Dec"
    text = f"its {n} galaxies span RA {ra0:.4g}..{ra1:.4g}, Dec {dec0:.4g}..{dec1:.4g} deg"
    if max(abs(dec0), abs(dec1)) > 90 or ra0 < -360 or ra1 > 720:
        return (
            f"{text}: beyond |Dec| <= 90 deg, so not degrees: check catalogue.fits.radec_units "
            "('rad' converts radians to degrees; a catalogue in degrees needs 'deg')"
        )
    return f"{text}: check that layout.footprint is the catalogue's sky and the patch ids"


def _no_data_message(
    chunks: Callable[[], Iterable[GalaxyChunk]], grid: PatchGrid, ids: np.ndarray, where: str
) -> str:
    return (
        f"{where}: no galaxy falls in any of the {len(ids)} configured patches (centres in "
        f"deg: {_centres(grid, ids, ids.tolist())}); "
        f"{_extent(chunks)}"
    )


def _empty_patches_message(
    empty: Mapping[int, int],
    chunks: Callable[[], Iterable[GalaxyChunk]],
    grid: PatchGrid,
    ids: np.ndarray,
    where: str,
) -> str:
    """Which configured patches hold no observed pixel, why, and which have data."""
    with_data = sorted(set(ids.tolist()) - set(empty))
    no_galaxy = [i for i, n in empty.items() if n == 0]
    parts = []
    if no_galaxy:
        parts.append(
            f"no galaxy falls in {no_galaxy} (centres in deg: "
            f"{_centres(grid, ids, no_galaxy)}; {_extent(chunks)})"
        )
    masked = {i: n for i, n in empty.items() if n > 0}
    if masked:
        counts = ", ".join(f"{n} in patch {i}" for i, n in masked.items())
        parts.append(f"their galaxies ({counts}) all lie in pixels outside layout.footprint")
    has = f"patches {with_data} have data" if with_data else "no configured patch has data"
    return (
        f"{where}: data patches {sorted(empty)} hold no observed pixel in any bin: "
        f"{'; '.join(parts)}. {has}; configure only patches with data "
        "(sampling.patches, validation.patches)"
    )


def _check_duplicates(acct: Accounting, policy: str, where: str) -> None:
    """Warn about the duplicate rows used (``catalogue.duplicates: warn``) or refuse them."""
    if not acct.duplicates:
        return
    message = (
        f"{where}: {acct.duplicates} duplicate rows: {acct.duplicates} of the {acct.used} "
        "galaxies used repeat an earlier row (same ra, dec, e1, e2)"
    )
    if policy == "error":
        raise CatalogueError(
            f"{message}; remove them, or set catalogue.duplicates: warn to use each row as "
            "often as it appears"
        )
    log.warning("%s: each is used as often as it appears (header card NDUP)", message)


def _truth_maps(config: Mapping[str, Any], kappa: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """The convergence maps cut out on the patch grids, [patch, bin, row, col]."""
    nside = hp.npix2nside(kappa.shape[-1])
    args = (nside, grid.ra0, grid.dec0, grid.npix, grid.pixel_scale_arcmin)
    if config["layout"]["interpolation"] == "bilinear":
        table, weights = sphere.bilinear_table(*args)
        return sphere.extract(kappa, table, weights)
    return sphere.extract(kappa, sphere.pixel_table(*args))


def _pixelise_patches(
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    patch_ids: Sequence[int],
    data_paths: Sequence[str],
    truth_paths: Sequence[str],
    stream: str,
    shapes: Callable[[np.ndarray], ShapeModel] | None = None,
) -> None:
    """Pixelise the configured catalogue onto ``patch_ids``; the shared body of both streams.

    ``shapes``, given the convergence maps of ``inputs['kappa']``, makes the shape model
    that replaces the galaxies' shears (validation mocks of a real catalogue).

    Raises
    ------
    CatalogueError
        A configured patch with no observed pixel in any bin (none is written; the
        others are), naming it, the patches that have data and the likely cause: the
        catalogue's RA/Dec range against the patch centres (units, footprint). When no
        galaxy falls in any patch it is raised before any patch is written. Also duplicate
        rows with ``catalogue.duplicates: error``, and the catalogue's own errors.
    """
    if len(patch_ids) != len(data_paths):
        raise ValueError(f"pixelise: {len(patch_ids)} patch ids for {len(data_paths)} outputs")
    layout_path = _single(inputs["layout"])
    kappa_path = _single(inputs.get("kappa"))
    inputs = {k: _single(inputs[k]) for k in (*_DESY3_KEYS, "fits") if _single(inputs.get(k))}
    ids, grid = _patch_grid(config, layout_path, patch_ids)
    raw, where = _chunk_source(config, inputs)
    chunks = HashedChunks(raw)
    cal = _calibration(config, inputs, chunks, where)
    log.info("calibration: %s", cal.header())
    observed = _observed(config, grid)
    truth = model = None
    if truth_paths or shapes is not None:
        truth, model = _sky_products(config, kappa_path, grid, truth_paths, shapes)
    common = _stream_header(config, stream, where, cal, kappa_path, model)
    cat = config["catalogue"]
    patches = pixelise_catalogue(
        chunks,
        grid,
        DESY3_N_BINS,
        e_max=cat["e_max"],
        calibration=cal,
        noise=cat["noise"],
        sigma_e=cat["sigma_e"],
        observed=observed,
        memory_mb=cat["memory_mb"],
        where=os.fspath(where),
        shapes=model,
    )
    masked_fp = 0
    empty: dict[int, int] = {}  # patch id -> galaxies in it, of patches with no observed pixel
    for k, maps, acct in patches:
        if k == 0:
            common["CATHASH"] = chunks.digest
            _check_catalogue(config, acct, chunks, grid, ids, where)
        pid = int(ids[k])
        masked_fp += _outside_footprint(maps)
        if maps["MASK"].sum() == 0:
            # not written: a patch with nothing observed would give kappa = 0 downstream
            empty[pid] = int(maps["NGAL"].sum())
            continue
        patch_truth = None if truth is None else (truth_paths[k], truth[k])
        _write_patch(config, grid, k, pid, maps, acct, common, data_paths[k], patch_truth)
    log.info("pixels with galaxies masked as outside the footprint: %d", masked_fp)
    if empty:
        raise CatalogueError(_empty_patches_message(empty, chunks, grid, ids, where))


def _patch_grid(
    config: Mapping[str, Any], layout_path: str, patch_ids: Sequence[int]
) -> tuple[np.ndarray, PatchGrid]:
    """The ids (int64) of the patches to pixelise and their grid, from the layout table."""
    grid_all, _ = _grid(config, layout_path)
    ids = np.asarray([int(i) for i in patch_ids], dtype=np.int64)
    if ids.size and ids.max() >= len(grid_all):
        raise ValueError(f"pixelise: patch ids beyond the {len(grid_all)}-patch {layout_path}")
    return ids, grid_all.subset(ids)


def _observed(config: Mapping[str, Any], grid: PatchGrid) -> np.ndarray:
    """Whether each pixel centre lies inside ``layout.footprint``, [patch, row, col] bool."""
    mask = _footprint(config)
    nside_fp = hp.npix2nside(mask.size)
    return mask[
        sphere.pixel_table(nside_fp, grid.ra0, grid.dec0, grid.npix, grid.pixel_scale_arcmin)
    ]


def _sky_products(
    config: Mapping[str, Any],
    kappa_path: str | None,
    grid: PatchGrid,
    truth_paths: Sequence[str],
    shapes: Callable[[np.ndarray], ShapeModel] | None,
) -> tuple[np.ndarray | None, ShapeModel | None]:
    """What the sky ``kappa_path`` gives: the truth cut-outs (if ``truth_paths``, one a
    patch) and the shape model (if ``shapes``)."""
    if kappa_path is None or (truth_paths and len(truth_paths) != len(grid)):
        raise ValueError("pixelise: truth outputs need the convergence map and one path a patch")
    kappa, _ = read_healpix(kappa_path)
    check_values(kappa_path, "HEALPIX", kappa)
    if len(kappa) != DESY3_N_BINS:
        raise ProductError(f"{kappa_path}: {len(kappa)} convergence maps, expected {DESY3_N_BINS}")
    truth = _truth_maps(config, kappa, grid) if truth_paths else None
    model = shapes(kappa) if shapes is not None else None
    return truth, model


def _stream_header(
    config: Mapping[str, Any],
    stream: str,
    where: str,
    cal: ShearCalibration,
    kappa_path: str | None,
    model: ShapeModel | None,
) -> dict[str, Any]:
    """Header cards of every patch of a stream: its catalogue, noise model and calibration.

    The catalogue's hash (``CATHASH``) joins them once the first pass has read it.
    """
    cat = config["catalogue"]
    common = dict(
        STREAM=stream,
        SOURCE=cat["source"],
        CATALOG=os.fspath(where),
        NOISE=cat["noise"],
        EMAX=float(cat["e_max"]),
        **cal.header(),
    )
    if kappa_path is not None:
        common["TRUTH"] = os.fspath(kappa_path)
    if stream == "mock":
        common["MOCKSHAP"] = "rotated" if model is not None else "catalogue"
    return common


def _check_catalogue(
    config: Mapping[str, Any],
    acct: Accounting,
    chunks: Callable[[], Iterable[GalaxyChunk]],
    grid: PatchGrid,
    ids: np.ndarray,
    where: str,
) -> None:
    """Once the catalogue is read: log its accounting; refuse it if no galaxy falls in any
    patch, and its duplicate rows under ``catalogue.duplicates: error``."""
    log.info("accounting: %s", acct.summary())
    if acct.used == 0:
        raise CatalogueError(_no_data_message(chunks, grid, ids, where))
    _check_duplicates(acct, config["catalogue"]["duplicates"], os.fspath(where))


def _outside_footprint(maps: Mapping[str, np.ndarray]) -> int:
    """Pixels (all bins) that hold galaxies but are masked as outside the footprint."""
    return int(((maps["NGAL"] > 0) & (maps["MASK"] == 0)).sum())


def _write_patch(
    config: Mapping[str, Any],
    grid: PatchGrid,
    k: int,
    pid: int,
    maps: Mapping[str, np.ndarray],
    acct: Accounting,
    common: Mapping[str, Any],
    data_path: str,
    truth: tuple[str, np.ndarray] | None,
) -> None:
    """Write patch ``k`` of ``grid`` (id ``pid``): its shear maps and, given ``truth`` as
    ``(path, kappa)``, its true convergence."""
    wcs = tan_header(grid.ra0[k], grid.dec0[k], grid.npix, grid.pixel_scale_arcmin)
    prim = provenance(
        config,
        PATCHID=pid,
        RA0=float(grid.ra0[k]),
        DEC0=float(grid.dec0[k]),
        NGALPAT=int(maps["NGAL"].sum()),
        NMASKED=int((maps["MASK"] == 0).sum()),
        NMASKFP=_outside_footprint(maps),
        **acct.header(),
        **common,
    )
    hdus = [
        image_hdu(name, maps[name], wcs, dtype=maps[name].dtype)
        for name in ("G1", "G2", "SIGMA", "MASK", "NGAL")
    ]
    write_fits(data_path, hdus, primary_header=prim)
    if truth is not None:
        path, kappa = truth
        identity = {key: common[key] for key in ("STREAM", "SOURCE", "CATALOG", "CATHASH")}
        header = provenance(config, PATCHID=pid, TRUTH=common["TRUTH"], **identity)
        write_fits(path, [image_hdu("KAPPA", kappa, wcs)], primary_header=header)


def pixelise(
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    patch_ids: Sequence[int],
    data_paths: Sequence[str],
    truth_paths: Sequence[str] = (),
) -> None:
    """Pixelise the configured catalogue into the data patches (and a mock's truth maps).

    Parameters
    ----------
    config
        Validated configuration (``catalogue``, ``layout``, ``seed``).
    inputs
        Input files by name: the catalogue's (``fits``, or ``metacal``, ``index`` and
        ``sompz``), ``layout`` (the footprint layout table) and, for the mock catalogue,
        ``kappa`` (the sky the mock was made from; a path or a one-element list).
    patch_ids, data_paths
        Patches to make and their output files (same order).
    truth_paths
        For the mock catalogue: output files of the true convergence cut-outs, one a patch.
    """
    _pixelise_patches(config, inputs, patch_ids, data_paths, truth_paths, "data")


def pixelise_mocks(
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    patch_ids: Sequence[int],
    data_paths: Sequence[str],
    truth_paths: Sequence[str],
) -> None:
    """The validation mocks: shear maps with known truth, made like the data.

    For the mock catalogue, its own patches (noise and shear of the held-out sky, as the
    data). For a real catalogue (``desy3``, ``fits``), the real galaxies with their shapes
    rotated by random angles and the held-out sky's shear added
    (:class:`~kappadiff.catalogue.ShapeNoiseMock`), pixelised with the data's code, cuts
    and calibration: the mock's mask, counts and per-pixel noise are the survey's own.

    Parameters
    ----------
    config
        Validated configuration.
    inputs
        As :func:`pixelise`, with ``kappa`` the held-out sky (``sims.mock_sim``) for every
        source.
    patch_ids, data_paths, truth_paths
        Mock patches and their ``results/mocks/data`` and ``results/mocks/truth`` files.
    """
    shapes = None
    if config["catalogue"]["source"] != "mock":
        cat = config["catalogue"]
        seed = derive_seed(config["seed"], "validation_mock_shapes")

        def shapes(kappa: np.ndarray) -> ShapeNoiseMock:
            log.info("validation mocks: the catalogue's shapes rotated plus the sky's shear")
            g1, g2 = (np.empty(kappa.shape, np.float32) for _ in range(2))
            for b in range(len(kappa)):
                log.info("bin %d of %d: shear of the held-out sky", b + 1, len(kappa))
                g1[b], g2[b] = sims.shear_from_kappa(kappa[b])
            reduced = kappa.astype(np.float32) if cat["reduced_shear"] else None
            return ShapeNoiseMock(g1, g2, reduced, seed)

    _pixelise_patches(config, inputs, patch_ids, data_paths, truth_paths, "mock", shapes)


# --------------------------------------------------------------------------- footprint


def catalogue_footprint(
    config: Mapping[str, Any], inputs: Mapping[str, Any], output: str | os.PathLike
) -> None:
    """HEALPix occupancy footprint of a catalogue (pixels holding a usable galaxy).

    For real data without a footprint file: point ``layout.footprint`` at ``output``.
    The map holds the number of galaxies passing the quality cuts per pixel at
    ``catalogue.occupancy_nside``; the layout reads values > 0 as inside.
    """
    cat = config["catalogue"]
    nside = cat["occupancy_nside"]
    inputs = {k: _single(inputs[k]) for k in (*_DESY3_KEYS, "fits") if _single(inputs.get(k))}
    chunks, where = _chunk_source(config, inputs)
    counts = np.zeros(hp.nside2npix(nside), dtype=np.int64)
    cuts = quality_cut_chunks(chunks(), DESY3_N_BINS, cat["e_max"], os.fspath(where))
    for chunk, keep, _ in cuts:
        counts += occupancy_mask(nside, chunk.ra[keep], chunk.dec[keep])
    inside = counts > 0
    area = inside.sum() * hp.nside2pixarea(nside, degrees=True)
    log.info("occupancy footprint at nside %d: %d pixels, %.1f deg^2", nside, inside.sum(), area)
    write_healpix(
        output,
        counts.astype(np.float32)[None],
        names=["NGAL"],
        header=provenance(config, CATALOG=os.fspath(where), AREA=float(area)),
    )
