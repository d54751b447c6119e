"""Stages ``validate_patch_figure`` and ``validate_mosaic_figure``: figures 3 and 4 of the data.

Figure 3 shows one data patch: the posterior mean, the Wiener filter, Kaiser-Squires and the
posterior std, with the richest clusters of a cluster catalogue (or, on a mock catalogue, the
highest peaks of the true κ) marked. Figure 4 is the HEALPix mosaic of the posterior mean
and std in one tomographic bin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..products import ProductError, open_fits, read_healpix, read_images, save_figure
from ..sphere import sky_to_pixel
from ..stats import truth_peaks

__all__ = ["mosaic_figure", "mosaic_figure_memory_mb", "patch_figure", "read_cluster_catalogue"]

log = logging.getLogger(__name__)


def read_cluster_catalogue(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """RA, DEC (deg) and LAMBDA (richness) of a cluster catalogue FITS table (redMaPPer).

    Reads the first table extension; raises naming the file and missing column.
    """
    from astropy.io import fits

    with open_fits(path) as hdul:
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
        if not tables:
            raise ProductError(f"{path}: no table extension")
        data = tables[0].data
        names = [c.upper() for c in tables[0].columns.names]
        missing = [c for c in ("RA", "DEC", "LAMBDA") if c not in names]
        if missing:
            raise ProductError(f"{path}: cluster catalogue lacks columns {missing} (has {names})")
        out = {c: np.asarray(data[c], dtype=np.float64) for c in ("RA", "DEC", "LAMBDA")}
    bad = ~(np.isfinite(out["RA"]) & np.isfinite(out["DEC"]) & np.isfinite(out["LAMBDA"]))
    if bad.any():
        log.warning(
            "%s: %d of %d clusters with non-finite RA/DEC/LAMBDA dropped", path, bad.sum(), bad.size
        )
        out = {k: x[~bad] for k, x in out.items()}
    return out


def patch_figure(
    posterior_path: str | os.PathLike,
    ks_path: str | os.PathLike,
    wiener_path: str | os.PathLike,
    clusters_path: str | os.PathLike | None,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """Figure 3: DPS mean, Wiener, KS and DPS std of one patch with cluster positions.

    ``clusters_path`` is either a cluster catalogue (``validation.clusters``: FITS with RA,
    DEC, LAMBDA; the ``validation.n_clusters`` richest in the patch are drawn, the same in
    every bin), or, on a mock catalogue, the patch's truth (HDU KAPPA; its ``n_clusters``
    highest peaks per bin are drawn), or None (real data without a cluster catalogue: no
    markers).
    """
    n_show = int(config["validation"]["n_clusters"])
    post, header = read_images(posterior_path, ["MEAN", "STD"])
    mean, std = post["MEAN"], post["STD"]
    maps = {
        "DPS mean": mean,
        "Wiener": read_images(wiener_path, ["KAPPA"])[0]["KAPPA"],
        "Kaiser-Squires": read_images(ks_path, ["KAPPA"])[0]["KAPPA"],
        "DPS std": std,
    }
    n_bins, npix = mean.shape[0], mean.shape[-1]
    if clusters_path is None:
        none = np.empty(0)
        clusters = [(none, none, none)] * n_bins
        label = "no cluster catalogue (validation.clusters)"
    elif config["validation"]["clusters"]:
        cat = read_cluster_catalogue(clusters_path)
        row, col = sky_to_pixel(
            cat["RA"], cat["DEC"], header["CRVAL1"], header["CRVAL2"], npix,
            float(config["layout"]["pixel_scale_arcmin"]),
        )  # fmt: skip
        inside = (
            np.isfinite(row)
            & (row >= -0.5)
            & (row < npix - 0.5)
            & (col >= -0.5)
            & (col < npix - 0.5)
        )
        order = np.argsort(cat["LAMBDA"][inside])[::-1][:n_show]
        sel = (row[inside][order], col[inside][order], cat["LAMBDA"][inside][order])
        clusters = [sel] * n_bins
        label = f"redMaPPer-like clusters (λ, {len(order)} richest)"
    else:
        truth = read_images(clusters_path, ["KAPPA"])[0]["KAPPA"].astype(np.float64)
        clusters = truth_peaks(truth, n_show)
        label = f"{n_show} highest true-κ peaks"
    title = f"patch {header.get('PATCHID', Path(posterior_path).stem)}"
    save_figure(plots.patch_reconstructions(maps, clusters, title, label), figure_output)
    return Path(figure_output)


def mosaic_figure_memory_mb(nside: int) -> int:
    """Memory (MB) of the ``validate_mosaic_figure`` job at the mosaic's ``nside``.

    The mean, std and coverage maps (9 float32 a pixel), the two float64 maps drawn and
    skyproj's rendering: 12.4 GB measured at nside 4096 (config/desy3_smoke.yaml), 61 bytes
    a pixel; counted as 64 bytes a pixel, plus 30 % and 1.5 GB.
    """
    return int(1.3 * 12 * nside**2 * 64 / 1e6) + 1500


def mosaic_figure(
    mean_path: str | os.PathLike,
    std_path: str | os.PathLike,
    coverage_path: str | os.PathLike,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """Figure 4: HEALPix mosaic of the posterior mean and std, bin ``validation.mosaic_bin``.

    Pixels with zero coverage (``results/mosaic/coverage.fits``) are left blank.
    """
    import healpy as hp

    b = int(config["validation"]["mosaic_bin"])
    mean, _ = read_healpix(mean_path)
    std, _ = read_healpix(std_path)
    coverage, _ = read_healpix(coverage_path)
    if not 1 <= b <= len(mean):
        raise ValueError(f"validation.mosaic_bin = {b}, but {mean_path} holds {len(mean)} bins")
    if coverage.shape[-1] != mean.shape[-1]:
        raise ProductError(
            f"{coverage_path}: {coverage.shape[-1]} pixels, {mean_path} has {mean.shape[-1]}"
        )
    covered = coverage[0] > 0
    log.info("mosaic: %d covered pixels of %d", int(covered.sum()), covered.size)
    maps = [np.where(covered, m[b - 1].astype(np.float64), hp.UNSEEN) for m in (mean, std)]
    save_figure(plots.mosaic_maps(*maps, f"bin {b}"), figure_output)
    return Path(figure_output)
