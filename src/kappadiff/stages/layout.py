"""Stages `layout_fullsky`, `layout_footprint` and `extract_patches`.

The footprint layout is a deterministic function of the configuration, cheap to compute
(under a second for the DES polygon), so the workflow calls :func:`footprint_patch_ids`
while it builds the DAG instead of making `layout_footprint` a checkpoint: the list of
data patches is known up front, `snakemake -n` shows every job, and the file written by
`layout_footprint` holds the same centres in the same order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import healpy as hp
import numpy as np

from .. import footprint, sphere
from ..products import (
    ProductError,
    atomic_output,
    check_values,
    load_npy,
    provenance,
    read_healpix,
    read_table,
    save_npy,
    write_table,
)

__all__ = [
    "data_patch_ids",
    "mock_catalogue_patch_ids",
    "validation_patch_ids",
    "extract_memory_mb",
    "extract_patches",
    "footprint_input_files",
    "footprint_layout_from_config",
    "footprint_patch_ids",
    "write_footprint_layout",
    "write_fullsky_layout",
    "write_index_table",
]

log = logging.getLogger(__name__)


def _geometry_cards(layout: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "NPIX": int(layout["npix"]),
        "PIXSCALE": float(layout["pixel_scale_arcmin"]),
        "PATCHDEG": float(layout["patch_size_deg"]),
    }


def footprint_layout_from_config(
    config: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Footprint patch centres and coverage from ``config['layout']`` (see the schema).

    Returns ``(ra, dec, coverage)``, arrays of shape (n_patch,); patch id = array index.
    """
    lay = config["layout"]
    mask = footprint.footprint_mask(lay["footprint"], lay["footprint_nside"])
    return sphere.footprint_layout(
        mask, lay["spacing_deg"], lay["min_coverage"], lay["patch_size_deg"]
    )


def footprint_patch_ids(config: Mapping[str, Any]) -> list[int]:
    """Ids (0..n-1) of the footprint patches the configuration lays out, for the DAG."""
    ra, _, _ = footprint_layout_from_config(config)
    return list(range(len(ra)))


def _checked_ids(config: Mapping[str, Any], key: str, ids: list[int], n_patch: int) -> list[int]:
    beyond = [i for i in ids if not 0 <= i < n_patch]
    if beyond:
        ra, dec, coverage = footprint_layout_from_config(config)
        interior = sphere.separated_interior_patches(
            ra, dec, coverage, config["layout"]["patch_size_deg"]
        )
        raise ValueError(
            f"{key}: ids {beyond} are not in the {n_patch}-patch layout of "
            f"layout.footprint = {config['layout']['footprint']!r}: valid ids are "
            f"0..{n_patch - 1}; interior patches that do not overlap (for "
            f"validation.patches): {interior[:40]}"
        )
    return ids


def data_patch_ids(config: Mapping[str, Any]) -> list[int]:
    """Footprint patch ids to reconstruct: ``sampling.patches``, or all footprint patches.

    Raises
    ------
    ValueError
        If ``sampling.patches`` names ids beyond the footprint layout (the message lists the
        valid ids).
    """
    return _data_patch_ids(config, len(footprint_patch_ids(config)))


def _data_patch_ids(config: Mapping[str, Any], n_patch: int) -> list[int]:
    wanted = config["sampling"]["patches"]
    ids = list(range(n_patch)) if wanted == "all" else [int(i) for i in wanted]
    return _checked_ids(config, "sampling.patches", ids, n_patch)


def validation_patch_ids(config: Mapping[str, Any]) -> list[int]:
    """Footprint patch ids of the validation mocks (``validation.patches``), in config order.

    The mocks are made on these patches of the data layout, whatever the catalogue; they
    need not be data patches.

    Raises
    ------
    ValueError
        If ``validation.patches`` names ids beyond the layout (the message lists the valid
        ids and the interior, non-overlapping ones).
    """
    ids = [int(i) for i in config["validation"]["patches"]]
    return _checked_ids(config, "validation.patches", ids, len(footprint_patch_ids(config)))


def mock_catalogue_patch_ids(config: Mapping[str, Any]) -> list[int]:
    """Patches the mock catalogue covers (mock source): data and validation patches, sorted.

    One catalogue serves both streams on mocks, so the validation mocks see the same
    galaxies as the data where the patches coincide.
    """
    n_patch = len(footprint_patch_ids(config))  # the layout is computed once
    ids = set(_data_patch_ids(config, n_patch))
    if "validation" in config:
        wanted = [int(i) for i in config["validation"]["patches"]]
        ids |= set(_checked_ids(config, "validation.patches", wanted, n_patch))
    return sorted(ids)


def footprint_input_files(config: Mapping[str, Any]) -> list[str]:
    """The footprint file the layout reads (none for the built-in DES polygon)."""
    source = config["layout"]["footprint"]
    return [] if source == "des" else [source]


def extract_memory_mb(config: Mapping[str, Any], n_patch: int = 2146) -> int:
    """Memory (MB) of one `extract_patches` job, for the rule's ``mem_mb``.

    Counts the 4 maps twice (the FITS read and the stacked float32 copy), the index
    table (int64, or int64 + float32 weights for 4 neighbours) and the float32 cut-outs,
    plus 30 % and 500 MB for the interpreter.
    """
    lay = config["layout"]
    maps = 2 * 4 * 4 * 12 * config["sims"]["nside"] ** 2
    n_cut = n_patch * lay["npix"] ** 2
    table = n_cut * (8 if lay["interpolation"] == "nearest" else 48)
    return int(1.3 * (maps + table + 16 * n_cut) / 1e6) + 500


def write_fullsky_layout(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the full-sky training layout (2,146 patches at 4.2667 deg) as a table."""
    lay = config["layout"]
    ra, dec = sphere.fullsky_layout(lay["patch_size_deg"])
    log.info("full-sky layout: %d patches of %.4f deg", len(ra), lay["patch_size_deg"])
    write_table(
        path,
        {"id": np.arange(len(ra)), "ra": ra, "dec": dec},
        header=provenance(config, LAYOUT="fullsky", NRINGS=40, **_geometry_cards(lay)),
    )


def write_footprint_layout(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the data-patch layout covering the configured footprint as a table."""
    lay = config["layout"]
    ra, dec, cov = footprint_layout_from_config(config)
    if len(ra) == 0:
        raise ValueError(
            f"layout.footprint = {lay['footprint']!r}: no patch reaches "
            f"layout.min_coverage = {lay['min_coverage']}"
        )
    area = len(ra) * lay["patch_size_deg"] ** 2
    log.info(
        "footprint layout (%s): %d patches, spacing %.3g deg, coverage >= %.2f "
        "(mean %.3f), %.0f deg^2 of patches",
        lay["footprint"],
        len(ra),
        lay["spacing_deg"],
        lay["min_coverage"],
        cov.mean(),
        area,
    )
    write_table(
        path,
        {"id": np.arange(len(ra)), "ra": ra, "dec": dec, "coverage": cov},
        header=provenance(
            config,
            LAYOUT="footprint",
            FOOTPRNT=str(lay["footprint"]),
            SPACING=float(lay["spacing_deg"]),
            MINCOV=float(lay["min_coverage"]),
            **_geometry_cards(lay),
        ),
    )


def _read_layout(path: str | os.PathLike, layout: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    table, header = read_table(path)
    for key in ("ra", "dec"):
        if key not in table:
            raise ProductError(f"{path}: layout table has no column '{key}'")
    for card, value in _geometry_cards(layout).items():
        if card in header and not np.isclose(header[card], value, rtol=1e-6):
            raise ProductError(
                f"{path}: {card} = {header[card]} but the configuration gives {value}; "
                "rebuild the layout"
            )
    return table["ra"].astype(np.float64), table["dec"].astype(np.float64)


def write_index_table(
    layout_path: str | os.PathLike, out_path: str | os.PathLike, config: Mapping[str, Any]
) -> None:
    """Build the HEALPix index table of a layout once, for every sky's extraction.

    Writes ``out_path`` (.npz): ``table`` (int64 ``[patch, row, col]``, or
    ``[patch, row, col, 4]`` for bilinear), ``weights`` (bilinear only, float32, same shape)
    and ``nside`` (``sims.nside``, the resolution of the maps it indexes).
    """
    lay = config["layout"]
    nside = int(config["sims"]["nside"])
    ra, dec = _read_layout(layout_path, lay)
    arrays: dict[str, np.ndarray] = {"nside": np.array(nside)}
    if lay["interpolation"] == "bilinear":
        arrays["table"], arrays["weights"] = sphere.bilinear_table(
            nside, ra, dec, lay["npix"], lay["pixel_scale_arcmin"]
        )
    else:
        arrays["table"] = sphere.pixel_table(nside, ra, dec, lay["npix"], lay["pixel_scale_arcmin"])
    with atomic_output(out_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    log.info(
        "index table: %d patches of %d px x %g arcmin at nside %d (%s), %.2f GB",
        len(ra),
        lay["npix"],
        lay["pixel_scale_arcmin"],
        nside,
        lay["interpolation"],
        sum(a.nbytes for a in arrays.values()) / 1e9,
    )


def extract_patches(
    kappa_path: str | os.PathLike,
    table_path: str | os.PathLike,
    out_path: str | os.PathLike,
) -> None:
    """Cut every layout patch out of a sky's tomographic convergence maps.

    Gathers through the index table of :func:`write_index_table` (one table for every
    sky and bin) and writes ``out_path`` (.npy, float32 ``[patch, bin, row, col]``,
    memory-mappable).
    """
    with load_npy(table_path) as npz:
        nside = int(npz["nside"])
        table = npz["table"]
        weights = npz["weights"] if "weights" in npz.files else None
    maps, _ = read_healpix(kappa_path)
    if maps.shape[1] != hp.nside2npix(nside):
        raise ProductError(
            f"{kappa_path}: maps of {maps.shape[1]} pixels, but the index table "
            f"{table_path} is for nside {nside}"
        )
    check_values(kappa_path, "HEALPIX", maps)
    log.info(
        "%s: %d maps at nside %d -> %d patches of %d x %d px",
        kappa_path,
        maps.shape[0],
        nside,
        table.shape[0],
        table.shape[1],
        table.shape[2],
    )
    cutouts = sphere.extract(maps, table, weights)
    del maps, table, weights
    save_npy(out_path, cutouts)
    log.info("wrote %s %s", out_path, cutouts.shape)
