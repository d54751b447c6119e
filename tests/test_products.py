"""Atomic writes, WCS headers, HEALPix and image round trips, damaged and truncated products."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from kappadiff import products
from kappadiff.catalogue import io
from kappadiff.diffusion.data import open_cutouts
from kappadiff.stages.baselines import read_cutouts


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


def data_patch(path, rng, npix=16):
    """A data patch as ``pixelise`` writes it: G1, G2, SIGMA, MASK, NGAL [bin, row, col]."""
    shape = (4, npix, npix)
    arrays = {
        "G1": rng.normal(0, 0.05, shape),
        "G2": rng.normal(0, 0.05, shape),
        "SIGMA": np.full(shape, 0.1),
        "MASK": np.ones(shape),
        "NGAL": np.full(shape, 20.0),
    }
    wcs = products.tan_header(150.0, -30.0, npix, 4.0)
    products.write_fits(path, [products.image_hdu(k, v, wcs) for k, v in arrays.items()])
    return path


def flip_bit(path, hdu, index, bit):
    """Flip one bit of the float32 at flat ``index`` of image HDU ``hdu`` in the file."""
    with fits.open(path) as hdul:
        offset = hdul[hdu].fileinfo()["datLoc"] + 4 * index  # big-endian: byte 0 holds the sign
    raw = bytearray(path.read_bytes())
    raw[offset + bit // 8] ^= 0x80 >> (bit % 8)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("bit", [1, 30])
def test_a_flipped_bit_in_a_data_patch_is_caught_when_read(tmp_path, rng, bit):
    # bit 1: the top exponent bit (0.05 becomes ~1e37, the probe's -4.5e36); bit 30: a
    # low mantissa bit, a change of 1e-8 no range check could see; both break DATASUM
    path = data_patch(tmp_path / "patch_0003.fits", rng)
    io.read_data_patch(path)
    flip_bit(path, "G1", 100, bit)
    with pytest.raises(
        products.ProductError,
        match=r"patch_0003.fits: HDU G1 \(#1\) does not match its DATASUM/CHECKSUM",
    ):
        io.read_data_patch(path)
    with pytest.raises(products.ProductError, match=r"patch_0003.fits: HDU G1 \(#1\)"):
        products.read_images(path)


def test_absurd_shear_or_sigma_in_observed_pixels_is_named(tmp_path, rng):
    # values a writer (or other software) put there, checksums intact: |g| or σ > 10
    for name, value in (("G2", -4.5e36), ("SIGMA", 300.0)):
        path = tmp_path / f"{name}.fits"
        data_patch(path, rng)
        with fits.open(path) as hdul:
            hdus = [h.copy() for h in hdul[1:]]
        hdus[[h.name for h in hdus].index(name)].data[1, 2, 3] = value
        products.write_fits(path, hdus)
        with pytest.raises(
            products.ProductError,
            match=rf"{name}.fits: HDU {name} has 1 pixels with \|value\| > 10",
        ):
            io.read_data_patch(path)


def test_check_values_counts_only_selected_pixels():
    values = np.array([0.1, np.nan, 50.0, -0.2])
    products.check_values("x.fits", "G1", values, where=[True, False, False, True])
    with pytest.raises(products.ProductError, match="x.fits: HDU G1 has 1 non-finite pixels"):
        products.check_values("x.fits", "G1", values)
    with pytest.raises(products.ProductError, match=r"HDU K has 1 pixels .* \(up to 50\)"):
        products.check_values("x.fits", "K", values, where=np.isfinite(values))


@pytest.mark.parametrize(
    "keep, message",
    [
        (0, r"empty file \(0 bytes\)"),
        (1000, r"not a readable FITS file \(1000 bytes\)"),
        (2880, r"truncated: 0 of the 5 extensions its header lists \(NEXTEND\)"),
        (5760 + 2000, r"truncated: 7760 bytes, its headers describe 11520"),
        (11520, r"truncated: 1 of the 5 extensions"),
    ],
)
def test_a_truncated_data_patch_is_named_with_its_size(tmp_path, rng, keep, message):
    path = data_patch(tmp_path / "patch_0007.fits", rng)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(products.ProductError, match=rf"patch_0007.fits: {message}"):
        io.read_data_patch(path)


def test_a_truncated_layout_table_is_named(tmp_path, rng):
    # the footprint layout (411 patches): cut by one block, the rows no longer fit
    path = products.write_table(
        tmp_path / "footprint.fits",
        {"id": np.arange(411), "ra": rng.uniform(0, 90, 411), "dec": rng.uniform(-60, 0, 411)},
    )
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-2880])
    with pytest.raises(
        products.ProductError,
        match=rf"footprint.fits: truncated: {full - 2880} bytes, its headers describe {full}",
    ):
        products.read_table(path)


def test_a_truncated_healpix_map_is_named(tmp_path, rng):
    path = products.write_healpix(tmp_path / "kappa.fits", rng.normal(size=(4, 12 * 32**2)))
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[: full // 2])
    with pytest.raises(
        products.ProductError,
        match=rf"kappa.fits: truncated: {full // 2} bytes, its headers describe {full}",
    ):
        products.read_healpix(path)


def test_a_truncated_cutout_file_is_named_with_its_shape(tmp_path, rng):
    path = tmp_path / "sim000_cutouts.npy"
    products.save_npy(path, rng.normal(size=(30, 4, 16, 16)).astype(np.float32))
    full = path.stat().st_size
    np.testing.assert_array_equal(products.load_npy(path, "r").shape, (30, 4, 16, 16))
    path.write_bytes(path.read_bytes()[:1000])
    message = rf"sim000_cutouts.npy: truncated: 1000 bytes, .* float32 \[30, 4, 16, 16\] in {full}"
    with pytest.raises(products.ProductError, match=message):
        open_cutouts([path])
    with pytest.raises(products.ProductError, match=message):
        read_cutouts([path], 4)
    path.write_bytes(b"")
    with pytest.raises(products.ProductError, match=r"sim000_cutouts.npy: empty file"):
        open_cutouts([path])


def test_read_images_verifies_the_hdus_it_reads(tmp_path, rng):
    # a mosaic reads MEAN and STD of each posterior, not its (large) SAMPLES
    path = data_patch(tmp_path / "patch_0005.fits", rng)
    flip_bit(path, "G2", 7, 30)
    products.read_images(path, ["G1", "SIGMA"])
    with pytest.raises(products.ProductError, match=r"patch_0005.fits: HDU G2 \(#2\)"):
        products.read_images(path, ["G1", "G2"])
