"""Stage `mosaic`: per-patch flat products back onto HEALPix.

One function serves the posterior (MEAN, STD) and the baselines (KAPPA): it reads the
named image HDU of every patch file, takes each patch's centre and pixel grid from its
TAN WCS, assigns every covered HEALPix pixel to one owning patch
(:func:`kappadiff.sphere.mosaic_assignment`) and writes one HEALPix file per HDU plus the
coverage map (number of patches over each pixel).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import sphere
from ..products import (
    ProductError,
    check_same_catalogue,
    provenance,
    read_images,
    write_healpix,
)

__all__ = ["mosaic_memory_mb", "write_mosaic"]

log = logging.getLogger(__name__)


def _patch_geometry(path: str | os.PathLike, header, shape) -> tuple[float, float, int, float]:
    """Centre (deg), pixels and pixel scale (arcmin) of a patch from its TAN WCS."""
    for key in ("CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CRPIX1", "CRPIX2"):
        if key not in header:
            raise ProductError(f"{path}: no WCS keyword {key} on the patch image")
    npix = shape[-1]
    if shape[-2] != npix:
        raise ProductError(f"{path}: patch image is {shape[-2]} x {shape[-1]}, not square")
    scale = float(header["CDELT2"]) * 60.0
    if not np.isclose(-float(header["CDELT1"]) * 60.0, scale, rtol=1e-9) or scale <= 0:
        raise ProductError(
            f"{path}: CDELT1 = {header['CDELT1']}, CDELT2 = {header['CDELT2']}; expected "
            "square pixels with CDELT1 < 0 (east left)"
        )
    for key in ("CRPIX1", "CRPIX2"):
        if not np.isclose(header[key], (npix + 1) / 2.0):
            raise ProductError(f"{path}: {key} = {header[key]} is not the patch centre")
    return float(header["CRVAL1"]), float(header["CRVAL2"]), npix, scale


def mosaic_memory_mb(nside: int, n_bins: int = 4) -> int:
    """Memory (MB) of a `mosaic` job at ``nside``, for the rule's ``mem_mb``.

    Counts the full-sky float32 depth, int32 owner and int32 coverage arrays of the
    assignment and three float32 map stacks (the new output, its FITS-table copy and the
    previous output until it is released), plus 30 % and 1 GB for the patch stacks.
    """
    n_hp = 12 * nside**2
    return int(1.3 * n_hp * (12 + 3 * 4 * n_bins) / 1e6) + 1000


def write_mosaic(
    patch_files: Sequence[str | os.PathLike],
    hdus: Sequence[str],
    map_paths: Sequence[str | os.PathLike],
    coverage_path: str | os.PathLike,
    nside: int,
    config: Mapping[str, Any],
) -> None:
    """Mosaic image HDUs of per-patch FITS files into HEALPix maps.

    Parameters
    ----------
    patch_files
        Per-patch FITS files, each holding the images ``hdus`` (``[bin, row, col]``, same
        geometry) with a TAN WCS.
    hdus
        Image names to mosaic, e.g. ``["MEAN", "STD"]`` or ``["KAPPA"]``.
    map_paths
        One output HEALPix file per entry of ``hdus`` (maps BIN1..BINn).
    coverage_path
        Output HEALPix file with the number of patches covering each pixel.
    nside
        Resolution of the mosaics.
    config
        The configuration, for the provenance cards.
    """
    if len(hdus) != len(map_paths):
        raise ValueError(f"write_mosaic: {len(hdus)} HDU names but {len(map_paths)} outputs")
    if not patch_files:
        raise ValueError("write_mosaic: no patch files")
    identity = check_same_catalogue(patch_files)
    values = {name: [] for name in hdus}
    ra0s, dec0s, geometry = [], [], None
    for path in patch_files:
        images, header = read_images(path, hdus)
        ra0, dec0, npix, scale = _patch_geometry(path, header, images[hdus[0]].shape)
        if geometry is None:
            geometry = (npix, scale)
        elif not (npix == geometry[0] and np.isclose(scale, geometry[1], rtol=1e-9)):
            raise ProductError(
                f"{path}: {npix} px x {scale} arcmin differs from {patch_files[0]} "
                f"({geometry[0]} px x {geometry[1]} arcmin)"
            )
        for name in hdus:
            bad = ~np.isfinite(images[name])
            if bad.any():
                raise ValueError(f"{path}: HDU {name} has {int(bad.sum())} non-finite values")
            values[name].append(images[name])
        ra0s.append(ra0)
        dec0s.append(dec0)
    npix, scale = geometry
    assignment = sphere.mosaic_assignment(np.array(ra0s), np.array(dec0s), npix, scale, nside)
    log.info(
        "%d patches of %d px x %g arcmin -> nside %d: %d pixels covered (%.1f deg^2)",
        len(patch_files),
        npix,
        scale,
        nside,
        assignment.pixels.size,
        assignment.pixels.size * 41252.96 / (12 * nside**2),
    )
    cards = provenance(config, NPATCH=len(patch_files), NPIX=npix, PIXSCALE=scale, **identity)
    for name, out in zip(hdus, map_paths, strict=True):
        stack = np.stack(values.pop(name))
        maps, _ = sphere.mosaic(stack, ra0s, dec0s, npix, scale, nside, assignment=assignment)
        del stack
        write_healpix(out, maps, header={**cards, "PRODUCT": name})
        log.info("wrote %s (%s, %d maps)", out, name, maps.shape[0])
    write_healpix(
        coverage_path,
        assignment.coverage[None].astype(np.float32),
        names=["COVERAGE"],
        header={**cards, "PRODUCT": "COVERAGE"},
    )
