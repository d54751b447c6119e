"""Figures 3 and 4 (kappadiff.stages.figures): a patch with its peaks and clusters, the mosaic."""

from __future__ import annotations

import numpy as np
import pytest
from validation_products import N_BINS, validation_config, write_kappa

from kappadiff import products
from kappadiff.stages import figures


def test_patch_figure_with_truth_peaks_and_a_cluster_catalogue(tmp_path, rng):
    config = validation_config()
    kappa = rng.normal(size=(N_BINS, 16, 16))
    header = products.tan_header(30.0, -20.0, 16, 16.0)
    products.write_fits(
        tmp_path / "post.fits",
        [
            products.image_hdu("MEAN", kappa, header),
            products.image_hdu("STD", np.abs(kappa), header),
        ],
        primary_header=products.provenance(None, PATCH=7, CRVAL1=30.0, CRVAL2=-20.0),
    )
    for name in ("ks", "wiener", "truth"):
        write_kappa(tmp_path / f"{name}.fits", kappa)
    args = [tmp_path / "post.fits", tmp_path / "ks.fits", tmp_path / "wiener.fits"]
    figures.patch_figure(*args, tmp_path / "truth.fits", tmp_path / "a.png", config)
    assert (tmp_path / "a.png").stat().st_size > 10_000

    cat = tmp_path / "redmapper.fits"
    columns = {
        "RA": np.array([30.0, 30.5, 200.0]),
        "DEC": np.array([-20.0, -19.5, 0.0]),
        "LAMBDA": np.array([40.0, 25.0, 100.0]),
    }
    products.write_table(cat, columns)
    figures.patch_figure(*args, cat, tmp_path / "b.png", validation_config(clusters=str(cat)))
    assert (tmp_path / "b.png").stat().st_size > 10_000
    products.write_table(cat, {"RA": np.zeros(2), "DEC": np.zeros(2)})
    with pytest.raises(products.ProductError, match="LAMBDA"):
        figures.read_cluster_catalogue(cat)


def test_mosaic_figure(tmp_path, rng):
    import healpy as hp

    nside = 32
    maps = np.zeros((N_BINS, hp.nside2npix(nside)))
    coverage = np.zeros((1, hp.nside2npix(nside)))
    disc = hp.query_disc(nside, hp.ang2vec(40.0, -30.0, lonlat=True), np.radians(10))
    maps[:, disc] = rng.normal(size=(N_BINS, disc.size))
    coverage[0, disc] = 1.0
    products.write_healpix(tmp_path / "mean.fits", maps)
    products.write_healpix(tmp_path / "std.fits", np.abs(maps))
    products.write_healpix(tmp_path / "cov.fits", coverage)
    files = [tmp_path / n for n in ("mean.fits", "std.fits", "cov.fits")]
    out = figures.mosaic_figure(*files, tmp_path / "m.png", validation_config())
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="mosaic_bin = 5"):
        figures.mosaic_figure(*files, tmp_path / "x.png", validation_config(mosaic_bin=5))
