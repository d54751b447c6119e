"""Atomic writes, WCS headers, HEALPix and image round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from kappadiff import products


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "x.fits"
    with pytest.raises(RuntimeError), products.atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_output_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with products.atomic_output(tmp_path / "x.txt") as tmp:
            tmp.write_text("done")
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644


def test_healpix_round_trip(tmp_path, rng):
    maps = rng.normal(size=(4, 12 * 16**2)).astype(np.float32)
    path = products.write_healpix(tmp_path / "k.fits", maps, header={"SEED": 3})
    back, header = products.read_healpix(path)
    np.testing.assert_array_equal(back, maps)
    assert header["ORDERING"] == "RING" and header["COORDSYS"] == "C"
    assert header["NSIDE"] == 16 and header["SEED"] == 3
    with fits.open(path, checksum=True) as hdul:  # checksums verify
        assert hdul[1].verify_checksum() == 1


def test_tan_header_orientation():
    h = products.tan_header(10.0, -30.0, 64, 4.0)
    assert h["CDELT1"] < 0 < h["CDELT2"]
    w = WCS(h)
    # centre of the array (between the two middle pixels) is the tangent point
    ra, dec = w.wcs_pix2world([[31.5, 31.5]], 0)[0]
    np.testing.assert_allclose([ra, dec], [10.0, -30.0], atol=1e-10)
    # col grows toward decreasing RA, row toward increasing Dec
    ra1, _ = w.wcs_pix2world([[40.0, 31.5]], 0)[0]
    _, dec1 = w.wcs_pix2world([[31.5, 40.0]], 0)[0]
    assert ra1 < 10.0 and dec1 > -30.0


def test_images_round_trip(tmp_path, rng):
    data = rng.normal(size=(4, 8, 8))
    hdr = products.tan_header(0.0, 0.0, 8, 32.0)
    products.write_fits(
        tmp_path / "p.fits",
        [products.image_hdu("MEAN", data, hdr)],
        primary_header=products.provenance({"a": 1}, seed=5),
    )
    images, header = products.read_images(tmp_path / "p.fits", ["MEAN"])
    np.testing.assert_allclose(images["MEAN"], data.astype(np.float32))
    assert header["SEED"] == 5 and "CFGHASH" in header
    with pytest.raises(products.ProductError, match="STD"):
        products.read_images(tmp_path / "p.fits", ["STD"])


def test_celestial_wcs_copies_tan_cards_and_names_missing(tmp_path):
    h = products.tan_header(12.0, -40.0, 16, 16.0)
    h["LONPOLE"] = 180.0
    h["OBJECT"] = "not a WCS card"
    wcs = products.celestial_wcs(h, "p.fits")
    assert wcs["CRVAL1"] == 12.0 and wcs["LONPOLE"] == 180.0 and "OBJECT" not in wcs
    del h["CDELT2"]
    with pytest.raises(products.ProductError, match=r"p.fits.*CDELT2"):
        products.celestial_wcs(h, "p.fits")
