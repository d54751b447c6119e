"""Stages `signal_power`, `baseline_ks`, `baseline_wiener(_tomo)` on small synthetic patches."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from kappadiff import lensing, stats
from kappadiff.products import (
    ProductError,
    image_hdu,
    provenance,
    save_npy,
    tan_header,
    write_fits,
    write_table,
)
from kappadiff.stages import baselines
from kappadiff.stats.spectra import _binning

N, SCALE, NBIN = 16, 16.0, 4
#: The catalogue identity every patch product carries (products.CATALOGUE_CARDS).
IDENTITY = {"SOURCE": "mock", "CATALOG": "synthetic.fits", "CATHASH": "0123456789abcdef"}

ELL = np.geomspace(10.0, 1e5, 64)
CL = 1e-7 * (ELL / 100.0) ** -1.5


def _config(tmp_path, **lensing_cfg):
    lcfg = {
        "pad": 4,
        "ks_smoothing_arcmin": 0.0,
        "wiener_signal_power": "measured",
        "wiener_power_cutouts": 50,
        "wiener_tol": 1e-6,
        "wiener_max_iter": 500,
    }
    lcfg.update(lensing_cfg)
    return {
        "results": str(tmp_path / "results"),
        "layout": {"npix": N, "pixel_scale_arcmin": SCALE, "patch_size_deg": N * SCALE / 60},
        "lensing": lcfg,
    }


def _fields(rng, n_maps):
    power = lensing.signal_power_grid(ELL, CL, (N, N), SCALE)
    white = rng.normal(size=(n_maps, NBIN, N, N))
    return np.fft.ifft2(np.sqrt(power) * np.fft.fft2(white)).real


def _write_patch(path, rng, **override):
    kappa = _fields(rng, 1)[0]
    g1, g2 = lensing.kappa_to_shear(kappa)
    sigma = np.full(kappa.shape, 0.01)
    mask = np.ones(kappa.shape)
    mask[:, :3, :5] = 0
    sigma[mask == 0] = 0
    g1 = np.where(mask > 0, g1 + sigma * rng.normal(size=g1.shape), 0)
    g2 = np.where(mask > 0, g2 + sigma * rng.normal(size=g2.shape), 0)
    images = {"G1": g1, "G2": g2, "SIGMA": sigma, "MASK": mask, "NGAL": 10 * mask}
    images.update(override)
    wcs = tan_header(30.0, -20.0, N, SCALE)
    cards = provenance(None, PATCHID=int(path.stem.split("_")[-1]), **IDENTITY)
    write_fits(path, [image_hdu(k, v, wcs) for k, v in images.items()], primary_header=cards)
    return kappa


def test_signal_power_from_cutouts(tmp_path, rng):
    cut = _fields(rng, 40).astype(np.float32)
    paths = [save_npy(tmp_path / "sim000_cutouts.npy", cut[:20])]
    paths.append(save_npy(tmp_path / "sim001_cutouts.npy", cut[20:]))
    config = _config(tmp_path, wiener_power_cutouts=15)
    out = tmp_path / "power.fits"
    baselines.measure_signal_power(paths, out, config)
    ell, cl = baselines.read_signal_power(out, NBIN)
    assert cl.shape == (NBIN, ell.size)
    assert fits.getheader(out)["NCUTOUT"] == 30
    # 30 maps x 4 bins of the same spectrum: mean of 120 maps within 5 sigma of the input
    edges = stats.ell_bins_linear(N, N, SCALE)
    _, counts, _ = _binning((N, N), SCALE, edges)
    expected = np.interp(ell, ELL, CL)
    scatter = np.sqrt(2.0 / (counts * 30 * NBIN))
    # bins hold modes spread over ±ℓ_f/2; for the ℓ^-1.5 slope the bin average differs
    # from C(mean ℓ) by < 5 % beyond the first two bins
    rel = np.abs(cl.mean(axis=0) / expected - 1)[2:]
    np.testing.assert_array_less(rel, 5 * scatter[2:] + 0.05)
    with pytest.raises(ProductError, match="cut-outs of shape"):
        bad = save_npy(tmp_path / "bad.npy", cut[:2, :, :8])
        baselines.measure_signal_power([bad], tmp_path / "p2.fits", config)


def test_ks_and_wiener_patch_products(tmp_path, rng):
    config = _config(tmp_path)
    data = tmp_path / "data" / "patch_0000.fits"
    truth = _write_patch(data, rng)
    power = tmp_path / "power.fits"
    cols = {"ELL": ELL, **{f"CL_BIN{b + 1}": CL for b in range(NBIN)}}
    write_table(power, cols, name="POWER")

    ks_out = tmp_path / "ks.fits"
    baselines.kaiser_squires_patch_file(data, ks_out, config)
    wf_out = tmp_path / "wiener.fits"
    baselines.wiener_patch_file(data, power, wf_out, config)
    src = fits.getheader(data, "G1")
    for out, method in ((ks_out, "KS"), (wf_out, "WIENER")):
        with fits.open(out) as hdul:
            assert hdul[0].header["METHOD"] == method
            # the patch and catalogue it was made from, as on the data
            assert hdul[0].header["PATCHID"] == 0
            assert hdul[0].header["CATHASH"] == IDENTITY["CATHASH"]
            kappa = hdul["KAPPA"].data
            assert kappa.shape == (NBIN, N, N) and kappa.dtype.kind == "f"
            for key in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "CTYPE1"):
                assert hdul["KAPPA"].header[key] == src[key]
        observed = np.ones((N, N), bool)
        observed[:3, :5] = False
        # noise 0.01 per pixel against κ rms ~0.05: both maps follow the truth closely
        for b in range(NBIN):
            assert np.corrcoef(kappa[b][observed], truth[b][observed])[0, 1] > 0.8
    h = fits.getheader(wf_out)
    assert all(h[f"WFRES{b + 1}"] <= 1e-6 for b in range(NBIN))


@pytest.mark.parametrize("method", ["ks", "wiener", "wiener_tomo"])
def test_baselines_refuse_a_patch_with_no_observed_pixel(tmp_path, rng, method):
    # every pixel masked: the maps were kappa = 0, written with exit 0
    config = _config(tmp_path)
    data = tmp_path / "patch_0005.fits"
    zeros = np.zeros((NBIN, N, N))
    _write_patch(data, rng, G1=zeros, G2=zeros, SIGMA=zeros, MASK=zeros, NGAL=zeros)
    power = tmp_path / "power.fits"
    cols = {"ELL": ELL, **{f"CL_BIN{b + 1}": CL for b in range(NBIN)}}
    cols.update(
        {baselines.cross_column(i, j): 0 * CL for i in range(NBIN) for j in range(i + 1, NBIN)}
    )
    write_table(power, cols, name="POWER")
    out = tmp_path / "out.fits"
    with pytest.raises(ProductError, match=r"patch_0005.fits: no observed pixel in any bin"):
        if method == "ks":
            baselines.kaiser_squires_patch_file(data, out, config)
        else:
            baselines.wiener_patch_file(
                data, power, out, config, tomographic=method == "wiener_tomo"
            )
    assert not out.exists()


def test_signal_power_has_the_cross_spectra(tmp_path, rng):
    cut = _fields(rng, 12)
    cut[:, 1] = 2.0 * cut[:, 0]  # bin 2 is twice bin 1: C_12 = 2 C_11, C_22 = 4 C_11
    cut[:, 3] = -cut[:, 2]  # bin 4 anticorrelated with bin 3
    path = save_npy(tmp_path / "sim000_cutouts.npy", cut.astype(np.float32))
    out = tmp_path / "power.fits"
    baselines.measure_signal_power([path], out, _config(tmp_path))
    ell, cl = baselines.read_signal_covariance(out, NBIN)
    assert cl.shape == (NBIN, NBIN, ell.size)
    np.testing.assert_array_equal(cl, np.swapaxes(cl, 0, 1))
    # float32 storage of the maps: relative rounding ~1e-7
    np.testing.assert_allclose(cl[0, 1], 2.0 * cl[0, 0], rtol=1e-5)
    np.testing.assert_allclose(cl[1, 1], 4.0 * cl[0, 0], rtol=1e-5)
    np.testing.assert_allclose(cl[2, 3], -cl[2, 2], rtol=1e-5)
    # independent bins 1 and 3: 12 maps x few modes per bin, |r| well below 1
    assert np.all(np.abs(cl[0, 2]) < np.sqrt(cl[0, 0] * cl[2, 2]))
    _, auto = baselines.read_signal_power(out, NBIN)
    np.testing.assert_array_equal(auto, cl[np.arange(NBIN), np.arange(NBIN)])


def test_tomographic_wiener_patch_product(tmp_path, rng):
    config = _config(tmp_path)
    data = tmp_path / "patch_0000.fits"
    truth = _write_patch(data, rng)
    power = tmp_path / "power.fits"
    autos = {"ELL": ELL, **{f"CL_BIN{b + 1}": CL for b in range(NBIN)}}
    write_table(power, autos, name="POWER")
    with pytest.raises(ProductError, match=r"power.fits: .*lacks columns \['CL_BIN1_2'"):
        baselines.wiener_patch_file(data, power, tmp_path / "out.fits", config, tomographic=True)
    # independent bins (zero cross power): the joint filter is the per-bin one
    cross = {
        baselines.cross_column(i, j): 0.0 * CL for i in range(NBIN) for j in range(i + 1, NBIN)
    }
    write_table(power, {**autos, **cross}, name="POWER")
    joint, single = tmp_path / "joint.fits", tmp_path / "single.fits"
    baselines.wiener_patch_file(data, power, joint, config, tomographic=True)
    baselines.wiener_patch_file(data, power, single, config)
    h = fits.getheader(joint)
    assert h["METHOD"] == "WIENER_TOMO" and h["WFRES"] <= 1e-6 and h["WFITER"] >= 1
    a, b = fits.getdata(joint, "KAPPA"), fits.getdata(single, "KAPPA")
    # both stop at a relative residual of 1e-6; the maps agree to well within 1e-3 of rms κ
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * truth.std())


def test_wiener_that_does_not_converge_is_an_error(tmp_path, rng):
    config = _config(tmp_path, wiener_max_iter=1, wiener_tol=1e-12)
    data = tmp_path / "patch_0000.fits"
    _write_patch(data, rng)
    power = tmp_path / "power.fits"
    write_table(power, {"ELL": ELL, **{f"CL_BIN{b + 1}": CL for b in range(NBIN)}})
    with pytest.raises(RuntimeError, match="did not reach lensing.wiener_tol"):
        baselines.wiener_patch_file(data, power, tmp_path / "out.fits", config)
    assert not (tmp_path / "out.fits").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"MASK": np.full((NBIN, N, N), 0.5)}, "MASK has 1024 values other than 0 and 1"),
        ({"G1": np.full((NBIN, N, N), np.nan)}, "G1 has 964 non-finite observed pixels"),
        ({"SIGMA": np.zeros((NBIN, N, N))}, "SIGMA is not > 0 .* in 964 observed pixels"),
        ({"G2": np.zeros((NBIN, N, N - 1))}, "HDU G2 has shape"),
    ],
)
def test_bad_data_patches_are_rejected(tmp_path, rng, override, message):
    data = tmp_path / "patch_0001.fits"
    _write_patch(data, rng, **override)
    with pytest.raises(ProductError, match=message):
        baselines.read_data_patch(data, SCALE)


def test_pixel_scale_must_match_config(tmp_path, rng):
    data = tmp_path / "patch_0002.fits"
    _write_patch(data, rng)
    with pytest.raises(ProductError, match="differs from layout.pixel_scale_arcmin"):
        baselines.read_data_patch(data, 2 * SCALE)


def test_signal_power_path(tmp_path):
    config = _config(tmp_path)
    assert baselines.signal_power_path(config).endswith("baselines/signal_power.fits")
    config["lensing"]["wiener_signal_power"] = "/data/cl.fits"
    assert baselines.signal_power_path(config) == "/data/cl.fits"


def test_read_cutouts_spaces_them_evenly_through_the_files(tmp_path):
    files = [tmp_path / "a.npy", tmp_path / "b.npy"]
    np.save(files[0], np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 2, 4, 4)))
    np.save(
        files[1], (3 + np.arange(5, dtype=np.float32))[:, None, None, None] * np.ones((5, 2, 4, 4))
    )
    got = baselines.read_cutouts(files, 4)
    # cut-outs 0..7 across the two files; 4 evenly spaced: 0, 2 (2.33), 5 (4.67), 7
    np.testing.assert_array_equal(got[:, 0, 0, 0], [0.0, 2.0, 5.0, 7.0])
    assert got.dtype == np.float64
    np.save(files[1], np.ones((5, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ProductError, match="b.npy: cut-outs of shape"):
        baselines.read_cutouts(files, 4)
