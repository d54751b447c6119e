"""Validation on mocks: scaling search and TARP of runs (stages.scaling_search), statistics
against the truth (kappadiff.stats, stages.statistics), prior draws, figures (stages.figures)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from kappadiff import plots, products, stats, tarp
from kappadiff.lensing import fourier_ell
from kappadiff.scaling import LikelihoodScaling, read_scaling
from kappadiff.stages import figures, scaling_search, statistics
from kappadiff.stages import prior as prior_stage

#: The catalogue identity every patch product carries (products.CATALOGUE_CARDS).
IDENTITY = {"SOURCE": "mock", "CATALOG": "synthetic.fits", "CATHASH": "0123456789abcdef"}

N_BINS = 4


def _config(npix=16, **overrides):
    v = {
        "patches": [0, 1],
        "n_samples": 8,
        "n_steps": 3,
        "t_bar": [300, 500],
        "sigma_t": [20],
        "per_bin": False,
        "tarp_tolerance": 0.1,
        "power_tolerance": 0.3,
        "n_references": 2,
        "n_regions": 4,
        "block": 2,
        "n_alpha": 21,
        "n_bootstrap": 50,
        "n_ell_bins": 6,
        "n_ensemble_cutouts": 1000,
        "n_pdf_bins": 10,
        "n_peak_bins": 6,
        "figure_patch": None,
        "clusters": "",
        "n_clusters": 3,
        "mosaic_bin": 4,
    }
    v.update(overrides)
    return {
        "seed": 11,
        "sampling": {"eta": 1.0, "n_samples": 4, "n_steps": 50, "step_power": 3.0, "scaled": True,
                     "t_bar": 500, "sigma_t": 20, "save_samples": "none"},
        "layout": {"npix": npix, "pixel_scale_arcmin": 16.0, "patch_size_deg": npix * 16 / 60},
        "validation": v,
    }  # fmt: skip


def gaussian_maps(rng, n_patch, n_samples, npix=16, width=1.0):
    """Truth and posterior samples of a per-pixel Gaussian toy (width 1 = calibrated)."""
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, npix, npix))
    truth = mu + rng.normal(size=mu.shape)
    samples = mu + width * rng.normal(size=(n_samples, *mu.shape))
    return truth, samples


def write_run(path, samples, scaling, n_steps=5):
    """A posterior product as the posterior stage writes it (the HDUs validation reads)."""
    cards = {"SCALED": bool(scaling["scaled"])}
    if scaling["scaled"]:
        for b in range(N_BINS):
            cards[f"TBAR{b + 1}"] = float(np.broadcast_to(scaling["t_bar"], (N_BINS,))[b])
            cards[f"SIGT{b + 1}"] = float(np.broadcast_to(scaling["sigma_t"], (N_BINS,))[b])
    t = np.linspace(999, 0, n_steps).astype(np.int32)
    drift = np.ones((n_steps, N_BINS)) * (1.0 if scaling["scaled"] else 1.5)
    products.write_fits(
        path,
        [
            products.image_hdu("MEAN", samples.mean(0)),
            products.image_hdu("STD", samples.std(0, ddof=1)),
            products.image_hdu("SAMPLES", samples),
            products.image_hdu("DRIFT", drift),
            products.image_hdu("TSTEPS", t, dtype=np.int32),
        ],
        primary_header=products.provenance(None, **cards, **IDENTITY),
    )


def write_kappa(path, kappa):
    cards = products.provenance(None, **IDENTITY)
    products.write_fits(path, [products.image_hdu("KAPPA", kappa)], primary_header=cards)


def write_candidates(directory, truth, runs):
    """Truth files and the products of candidate runs ``{"t{t_bar}_s20": samples}``."""
    n_patch = truth.shape[0]
    truth_paths = [directory / f"truth_{p}.fits" for p in range(n_patch)]
    for p, path in enumerate(truth_paths):
        write_kappa(path, truth[p])
    paths = {}
    for run, samples in runs.items():
        scaling = {"scaled": True, "t_bar": float(run[1:4]), "sigma_t": 20.0}
        paths[run] = [directory / f"{run}_{p}.fits" for p in range(n_patch)]
        for p, path in enumerate(paths[run]):
            write_run(path, samples[:, p], scaling)
    return paths, truth_paths


def write_masks(directory, truth, mask=None):
    """Data products (HDU MASK) of each patch of ``truth [patch, bin, n, n]``; all observed."""
    mask = np.ones_like(truth) if mask is None else mask
    paths = []
    for p in range(truth.shape[0]):
        paths.append(directory / f"data_{p:04d}.fits")
        products.write_fits(
            paths[-1],
            [products.image_hdu("MASK", mask[p])],
            primary_header=products.provenance(None, **IDENTITY),
        )
    return paths


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("npix", "scale"), [(16, 16.0), (64, 4.0), (256, 1.0)])
def test_log_ell_bins_cover_the_patch_without_empty_bins(npix, scale):
    edges = stats.log_ell_bins(npix, scale, 10)
    ell = fourier_ell(npix, npix, scale).ravel()
    modes = ell[ell > 0]
    assert np.all(np.diff(edges) > 0)
    assert edges[0] < modes.min() and edges[-1] == pytest.approx(np.pi / (scale * np.pi / 10800))
    counts = np.histogram(modes, bins=edges)[0]
    assert np.all(counts > 0)
    assert len(edges) - 1 <= 10


def test_compare_statistics_against_known_answers(rng):
    n_patch, npix = 6, 32
    truth = rng.normal(size=(n_patch, N_BINS, npix, npix))
    noise = rng.normal(size=truth.shape)
    maps = {
        "truth": truth,
        "mean": truth.copy(),  # a perfect reconstruction
        "wiener": truth + 3.0 * noise,  # white noise at 9x the signal power
        "samples": truth[None] + 0.2 * rng.normal(size=(5, *truth.shape)),
    }
    mask = np.ones_like(truth)
    edges = stats.log_ell_bins(npix, 4.0, 6)
    pdf_edges = np.tile(np.linspace(-5, 5, 21), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 5, 7), (N_BINS, 1))
    res = stats.compare_statistics(maps, mask, 4.0, edges, pdf_edges, peak_edges)
    # identical maps: rho = 1 to rounding, never crossing 0.5
    np.testing.assert_allclose(res["mean"]["rho"], 1.0, atol=1e-12)
    assert np.all(np.isnan(res["mean"]["ell_half"]))
    # white signal + white noise of 9x its power: rho = 1/sqrt(10) = 0.32 at every ell,
    # with scatter ~1/sqrt(modes) (~0.2 in the lowest bin of 24 modes), so it falls below
    # 0.5 within the first bins
    assert np.all(res["wiener"]["rho"].mean(axis=-1) < 0.45)
    assert np.all(res["wiener"]["ell_half"] <= res["wiener"]["ell"][2])
    # samples: C_l of truth + 4 % extra white power, cl of samples / cl of truth = 1.04, up
    # to the truth x noise cross term: sd 2 x 0.2 / sqrt(2 x 24 modes x 6 patches x 5 samples)
    # = 0.02 in the lowest bin; 3 sd
    ratio = res["samples"]["cl"] / res["truth"]["cl"]
    np.testing.assert_allclose(ratio, 1.04, atol=0.06)
    assert np.all(res["samples"]["cl_lo"] <= res["samples"]["cl_hi"])
    # unit-variance Gaussian PDF: density integrates to the fraction within ±5 (≈ 1)
    integral = (res["truth"]["pdf"] * 0.5).sum(axis=-1)
    np.testing.assert_allclose(integral, 1.0, atol=1e-3)
    # same peaks for identical maps
    np.testing.assert_array_equal(res["mean"]["peaks"], res["truth"]["peaks"])


def test_ell_half_bootstrap_resamples_patches_alike_for_every_method(rng):
    truth = rng.normal(size=(8, N_BINS, 16, 16))
    noisy = truth + 2.0 * rng.normal(size=truth.shape)  # rho ~ 0.45, crossing 0.5 early
    maps = {"truth": truth, "wiener": noisy, "mean": noisy.copy()}
    pdf_edges = np.tile(np.linspace(-4, 4, 9), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 4, 6), (N_BINS, 1))
    args = (np.ones_like(truth), 4.0, stats.log_ell_bins(16, 4.0, 4), pdf_edges, peak_edges)
    res = stats.compare_statistics(maps, *args, n_bootstrap=50, seed=3)
    boot_w, boot_m = res["wiener"]["ell_half_boot"], res["mean"]["ell_half_boot"]
    assert boot_w.shape == (50, N_BINS)
    # the same patch draws for every method: identical maps give identical resamplings
    np.testing.assert_array_equal(boot_m, boot_w)
    # and the draws do resample: 8 noisy patches do not give one ell_half 50 times
    assert np.all(np.nanstd(boot_w, axis=0) > 0)
    # 8 copies of one patch: every resampling is the whole set, so no scatter
    same = {k: np.repeat(v[:1], 8, axis=0) for k, v in maps.items()}
    res = stats.compare_statistics(same, *args, n_bootstrap=20, seed=3)
    np.testing.assert_allclose(
        res["wiener"]["ell_half_boot"], np.broadcast_to(res["wiener"]["ell_half"], (20, N_BINS))
    )


def test_compare_statistics_uses_observed_pixels_only(rng):
    truth = rng.normal(size=(1, N_BINS, 16, 16))
    ks = truth.copy()
    ks[..., :8, :] = 0.0  # zero-filled masked half, as Kaiser-Squires leaves it
    mask = np.ones_like(truth)
    mask[..., :8, :] = 0
    pdf_edges = np.tile(np.linspace(-4, 4, 9), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 4, 6), (N_BINS, 1))
    res = stats.compare_statistics(
        {"truth": truth, "ks": ks},
        mask,
        16.0,
        stats.log_ell_bins(16, 16.0, 4),
        pdf_edges,
        peak_edges,
    )
    np.testing.assert_array_equal(res["ks"]["pdf"], res["truth"]["pdf"])
    np.testing.assert_array_equal(res["ks"]["peaks"], res["truth"]["peaks"])
    # spectra of the observed pixels: a map equal to the truth where observed has rho = 1
    # and the truth's C_l, whatever it holds in the masked half (whole-patch spectra would
    # give rho ~ 0.7 here: half the truth's power is in the masked half)
    np.testing.assert_allclose(res["ks"]["rho"], 1.0, atol=1e-12)
    np.testing.assert_allclose(res["ks"]["cl"], res["truth"]["cl"], rtol=1e-12)
    noisy = truth + np.where(mask == 0, 5.0 * rng.normal(size=truth.shape), 0.0)
    res = stats.compare_statistics(
        {"truth": truth, "prior": noisy},
        mask,
        16.0,
        stats.log_ell_bins(16, 16.0, 4),
        pdf_edges,
        peak_edges,
    )
    np.testing.assert_allclose(res["prior"]["rho"], 1.0, atol=1e-12)


def test_tarp_of_runs_separates_calibrated_and_overconfident(rng):
    config = _config()
    truth, good = gaussian_maps(rng, n_patch=25, n_samples=8)
    refs = rng.normal(0.0, 2.2, size=(10, N_BINS, 16, 16))
    x, theta, pool = tarp.tarp_inputs(good, truth, refs, 4, 2)
    assert x.shape == (8, 25 * 16, N_BINS, 4) and theta.shape == (400, N_BINS, 4)
    assert pool.shape == (160, N_BINS, 4)
    res = scaling_search.run_coverage(x, theta, pool, config)
    assert set(res) == {(k, b) for k in scaling_search.REFERENCE_KINDS for b in range(N_BINS + 1)}
    # 400 sims: binomial sd of ECP <= 0.025; calibrated stays within 0.1 everywhere
    assert all(r.max_error < 0.1 for r in res.values())
    # the same sample scatter shrunk to 30 %: over-confident
    mean = good.mean(axis=0)
    narrow = mean + 0.3 * (good - mean)
    res_bad = scaling_search.run_coverage(*tarp.tarp_inputs(narrow, truth, refs, 4, 2), config)
    assert res_bad["prior", 0].max_error > 0.2


def test_search_scaling_picks_the_calibrated_run_and_the_tuned_figure(tmp_path, rng):
    config = _config()
    n_patch = 6
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, 16, 16))
    truth = mu + rng.normal(size=mu.shape)
    eps = rng.normal(size=(8, *mu.shape))
    runs = {
        "t300_s20": ({"scaled": True, "t_bar": 300.0, "sigma_t": 20.0}, mu + 0.3 * eps),
        "t500_s20": ({"scaled": True, "t_bar": 500.0, "sigma_t": 20.0}, mu + eps),
        "unscaled": ({"scaled": False}, mu + 0.1 * eps + 0.5),
    }
    paths, truth_paths = {}, []
    for p in range(n_patch):
        truth_paths.append(tmp_path / f"truth/patch_{p:04d}.fits")
        write_kappa(truth_paths[-1], truth[p])
    for run, (sc, s) in runs.items():
        paths[run] = []
        for p in range(n_patch):
            paths[run].append(tmp_path / f"runs/{run}/patch_{p:04d}.fits")
            write_run(paths[run][-1], s[:, p], sc)
    ref_path = tmp_path / "refs.fits"
    write_kappa(ref_path, rng.normal(0.0, 2.2, size=(3, N_BINS, 16, 16)))
    data_paths = write_masks(tmp_path, truth)
    out = scaling_search.search_scaling(
        paths, truth_paths, data_paths, ref_path, tmp_path / "scaling.fits",
        tmp_path / "tarp_search.fits", config,
    )  # fmt: skip
    chosen = read_scaling(out)
    assert chosen == LikelihoodScaling((500.0,) * 4, (20.0,) * 4)
    with fits.open(tmp_path / "tarp_search.fits") as hdul:
        summary = hdul["SUMMARY"].data
        joint = summary[(summary["refs"] == "prior") & (summary["bin"] == 0)]
        err = dict(zip(joint["run"], joint["max_error"], strict=True))
        assert set(err) == set(runs)
        assert err["t500_s20"] < 0.15 < err["unscaled"]  # 96 sims: sd 0.05 of ECP
        curves = hdul["CURVES"].data
        assert len(curves) == len(runs) * 2 * (N_BINS + 1) * 21

    # the tuned run is the chosen candidate: figure 1 and its table
    fig = tmp_path / "fig1.png"
    scaling_search.calibration_figure(
        paths["t500_s20"], paths["unscaled"], out, truth_paths, data_paths, ref_path,
        tmp_path / "tarp_coverage.fits", fig, config,
    )  # fmt: skip
    assert fig.stat().st_size > 10_000
    with fits.open(tmp_path / "tarp_coverage.fits") as hdul:
        summary = hdul["SUMMARY"].data
        tuned = summary[(summary["run"] == "tuned") & (summary["bin"] == 0)]
        assert np.all(tuned["t_bar"] == 500.0)


def test_search_scaling_prefers_the_informative_calibrated_run(tmp_path, rng):
    """Prior samples pass TARP with prior references; the search must not take them."""
    config = _config()
    n_patch = 6
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, 16, 16))
    truth = mu + rng.normal(size=mu.shape)
    runs = {
        # likelihood switched on too late: samples from the prior N(0, 5), calibrated
        "t500_s20": rng.normal(0.0, np.sqrt(5.0), size=(8, *mu.shape)),
        # the posterior N(mu, 1): calibrated and close to the truth
        "t900_s20": mu + rng.normal(size=(8, *mu.shape)),
    }
    paths, truth_paths = write_candidates(tmp_path, truth, runs)
    write_kappa(tmp_path / "refs.fits", rng.normal(0.0, np.sqrt(5.0), size=(4, N_BINS, 16, 16)))
    data_paths = write_masks(tmp_path, truth)
    scaling_search.search_scaling(
        paths, truth_paths, data_paths, tmp_path / "refs.fits",
        tmp_path / "scaling.fits", tmp_path / "search.fits", config,
    )  # fmt: skip
    assert list(read_scaling(tmp_path / "scaling.fits").t_bar) == [900.0] * N_BINS
    with fits.open(tmp_path / "search.fits") as hdul:
        summary = hdul["SUMMARY"].data
    joint = summary[(summary["refs"] == "prior") & (summary["bin"] == 0)]
    err = dict(zip(joint["run"], joint["max_error"], strict=True))
    mse = dict(zip(joint["run"], joint["mean_mse"], strict=True))
    rho = dict(zip(joint["run"], joint["mean_rho"], strict=True))
    assert max(err.values()) < 0.1  # both calibrated (96 sims: ECP sd ≈ 0.05)
    # truth² ≈ 5 a pixel; mean of 8 prior samples: (5 + 5/8)/5 ≈ 1.1; posterior mean:
    # (1 + 1/8)/5 ≈ 0.23
    assert mse["t500_s20"] > 0.9 and mse["t900_s20"] < 0.4
    # white maps: rho = cov/sqrt(var var) = 4/sqrt(4.125 * 5) ≈ 0.88 for the posterior mean;
    # the prior mean is independent of the truth (|rho| ~ 0.02 from 6 patches of 256 px)
    assert rho["t900_s20"] > 0.8 and abs(rho["t500_s20"]) < 0.1
    # with tolerance 0 the best calibrated run is taken, whichever it is
    config0 = _config(tarp_tolerance=0.0)
    scaling_search.search_scaling(
        paths, truth_paths, data_paths, tmp_path / "refs.fits",
        tmp_path / "scaling0.fits", tmp_path / "search0.fits", config0,
    )  # fmt: skip
    best = min(err, key=err.get)
    assert list(read_scaling(tmp_path / "scaling0.fits").t_bar) == [float(best[1:4])] * N_BINS


def test_mean_rho_is_of_observed_pixels_and_ignores_amplitude(rng):
    npix, scale = 16, 16.0
    edges = stats.log_ell_bins(npix, scale, 6)
    mu = rng.normal(0.0, 2.0, size=(6, N_BINS, npix, npix))
    truth = mu + rng.normal(size=mu.shape)
    exact = stats.mean_rho(truth, truth, np.ones_like(truth), scale, edges)
    np.testing.assert_allclose(exact, 1.0, atol=1e-12)
    # amplitude does not count (the calibration test constrains it); noise does:
    # white maps, rho = 4 / sqrt(4 * 5) ≈ 0.894 for the mean mu of a truth mu + n
    shrunk = stats.mean_rho(0.3 * mu, truth, np.ones_like(truth), scale, edges)
    np.testing.assert_allclose(shrunk, stats.mean_rho(mu, truth, np.ones_like(truth), scale, edges))
    assert shrunk.shape == (N_BINS + 1,)
    assert np.all(np.abs(shrunk - 0.894) < 0.05)  # ~1500 modes a bin: sd of rho ≈ 0.01
    np.testing.assert_allclose(shrunk[0], shrunk[1:].mean())
    # anything in masked pixels is not measured
    mask = np.ones_like(truth)
    mask[..., :, : npix // 2] = 0.0
    garbage = np.where(mask > 0, mu, 1e3 * rng.normal(size=mu.shape))
    np.testing.assert_allclose(
        stats.mean_rho(garbage, truth, mask, scale, edges),
        stats.mean_rho(mu, truth, mask, scale, edges),
    )


def test_search_scaling_ranks_calibrated_runs_by_rho_not_pixel_error(tmp_path, rng):
    """A mean shrunk to 0.3 of the signal correlates with the truth better than a noisy one.

    Pixel error prefers the noisy mean ((1.5 + 1)/5 = 0.5 against (0.49·4 + 1)/5 ≈ 0.59);
    ρ_c prefers the shrunk one (0.89 against 4/√(5.5·5) ≈ 0.76).
    """
    # every candidate counts as calibrated (neither has the power of the truth)
    config = _config(tarp_tolerance=1.0, power_tolerance=100.0)
    n_patch = 6
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, 16, 16))
    truth = mu + rng.normal(size=mu.shape)
    runs = {
        "t800_s20": 0.3 * mu + 0.1 * rng.normal(size=(8, *mu.shape)),
        "t900_s20": mu + np.sqrt(8 * 1.5) * rng.normal(size=(8, *mu.shape)),
    }
    paths, truth_paths = write_candidates(tmp_path, truth, runs)
    write_kappa(tmp_path / "refs.fits", rng.normal(0.0, np.sqrt(5.0), size=(4, N_BINS, 16, 16)))
    scaling_search.search_scaling(
        paths, truth_paths, write_masks(tmp_path, truth), tmp_path / "refs.fits",
        tmp_path / "scaling.fits", tmp_path / "search.fits", config,
    )  # fmt: skip
    with fits.open(tmp_path / "search.fits") as hdul:
        summary = hdul["SUMMARY"].data
    joint = summary[(summary["refs"] == "prior") & (summary["bin"] == 0)]
    mse = dict(zip(joint["run"], joint["mean_mse"], strict=True))
    rho = dict(zip(joint["run"], joint["mean_rho"], strict=True))
    assert mse["t900_s20"] < mse["t800_s20"]
    assert rho["t800_s20"] > rho["t900_s20"] + 0.08
    assert list(read_scaling(tmp_path / "scaling.fits").t_bar) == [800.0] * N_BINS


def test_search_scaling_per_bin(tmp_path, rng):
    # TARP decides here (the width-0.2 runs' power is 19 % low; the power check is tested
    # on its own below)
    config = _config(per_bin=True, power_tolerance=100.0)
    n_patch = 4
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, 16, 16))
    truth = mu + rng.normal(size=mu.shape)
    eps = rng.normal(size=(8, *mu.shape))
    width_a = np.array([1.0, 1.0, 0.2, 0.2])[:, None, None]  # good in bins 1-2
    width_b = np.array([0.2, 0.2, 1.0, 1.0])[:, None, None]  # good in bins 3-4
    runs = {
        "t300_s20": ({"scaled": True, "t_bar": 300.0, "sigma_t": 20.0}, mu + width_a * eps),
        "t600_s50": ({"scaled": True, "t_bar": 600.0, "sigma_t": 50.0}, mu + width_b * eps),
    }
    truth_paths = [tmp_path / f"truth_{p}.fits" for p in range(n_patch)]
    for p, path in enumerate(truth_paths):
        write_kappa(path, truth[p])
    paths = {}
    for run, (sc, s) in runs.items():
        paths[run] = [tmp_path / f"{run}_{p}.fits" for p in range(n_patch)]
        for p, path in enumerate(paths[run]):
            write_run(path, s[:, p], sc)
    write_kappa(tmp_path / "refs.fits", rng.normal(0.0, 2.2, size=(2, N_BINS, 16, 16)))
    scaling_search.search_scaling(
        paths, truth_paths,
        write_masks(tmp_path, truth), tmp_path / "refs.fits",
        tmp_path / "scaling.fits", tmp_path / "search.fits", config,
    )  # fmt: skip
    chosen = read_scaling(tmp_path / "scaling.fits")
    assert list(chosen.t_bar) == [300.0, 300.0, 600.0, 600.0]
    assert list(chosen.sigma_t) == [20.0, 20.0, 50.0, 50.0]


def test_power_ratio_and_error_of_rescaled_truths(rng):
    """Samples that are the truth times a have a² of its power at every ℓ: error |a² − 1|."""
    truth = rng.normal(size=(3, N_BINS, 32, 32))
    amp = np.array([1.0, 1.1, 0.9, 1.3])[None, None, :, None, None]
    samples = np.repeat(truth[None], 2, axis=0) * amp
    mask = np.ones_like(truth)
    mask[:, :, :4] = 0.0  # masked pixels count in neither
    samples[:, :, :, :4] = 100.0
    edges = stats.log_ell_bins(32, 4.0, 6)
    ell, ratio = stats.power_ratio(samples, truth, mask, 4.0, edges)
    assert ratio.shape == (N_BINS, len(ell))
    np.testing.assert_allclose(ratio, np.broadcast_to(amp.reshape(-1, 1) ** 2, ratio.shape))
    np.testing.assert_allclose(stats.power_error(ratio), [0.69, 0.0, 0.21, 0.19, 0.69], atol=1e-12)
    # one ℓ bin 50 % off counts for its share of the mean only
    ratio[0, 0] = 1.5
    assert stats.power_error(ratio)[1] == pytest.approx(0.5 / len(ell))
    fig = plots.calibration_panels(
        {"tuned": (np.arange(3), np.ones((3, N_BINS)))},
        {"tuned": {}},
        {"tuned": (ell, ratio, stats.power_error(ratio)[0])},
    )
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"


@pytest.mark.parametrize("per_bin", [False, True])
def test_search_scaling_rejects_a_run_whose_samples_fit_the_noise(tmp_path, rng, per_bin):
    """A run whose samples scatter about the truth itself has the best mean but too much power.

    Truth = μ + n (power 4 + 1 = 5 a pixel). The posterior N(μ, 1) has the truth's power. The
    noise-fitting run, truth + 1.5 ε, has a mean that correlates better with the truth but
    power 5 + 2.25 = 7.25: 45 % high. With TARP out of the way (tolerance 1), ρ_c would
    choose it; the power check (0.3) must not. 8 patches of 32² px: the calibrated run's
    error is 0.03-0.14 over seeds (the lowest ℓ bin holds a few modes), the other's 0.41-0.67.
    """
    config = _config(npix=32, per_bin=per_bin, tarp_tolerance=1.0)
    n_patch = 8
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, 32, 32))
    truth = mu + rng.normal(size=mu.shape)
    runs = {
        "t900_s20": mu + rng.normal(size=(8, *mu.shape)),
        "t975_s20": truth + 1.5 * rng.normal(size=(8, *mu.shape)),
    }
    paths, truth_paths = write_candidates(tmp_path, truth, runs)
    write_kappa(tmp_path / "refs.fits", rng.normal(0.0, np.sqrt(5.0), size=(4, N_BINS, 32, 32)))
    masks = write_masks(tmp_path, truth)

    def search(cfg, name):
        scaling_search.search_scaling(
            paths, truth_paths, masks, tmp_path / "refs.fits",
            tmp_path / f"{name}.fits", tmp_path / f"{name}_search.fits", cfg,
        )  # fmt: skip
        with fits.open(tmp_path / f"{name}_search.fits") as hdul:
            summary = hdul["SUMMARY"].data
        rows = summary[summary["refs"] == "prior"]
        return list(read_scaling(tmp_path / f"{name}.fits").t_bar), rows

    chosen, rows = search(config, "power")
    assert chosen == [900.0] * N_BINS
    for b in range(N_BINS + 1):
        per = {r["run"]: r for r in rows[rows["bin"] == b]}
        assert per["t900_s20"]["max_power_error"] < 0.2
        assert 0.35 < per["t975_s20"]["max_power_error"] < 0.75  # 0.45 expected
        assert per["t975_s20"]["mean_rho"] > per["t900_s20"]["mean_rho"] + 0.05
    # without the power check the better-correlated, noise-fitting run wins
    chosen, _ = search(_config(npix=32, per_bin=per_bin, tarp_tolerance=1.0,
                               power_tolerance=100.0), "nopower")  # fmt: skip
    assert chosen == [975.0] * N_BINS


def test_sample_mock_overrides_sampling_and_reuses_a_matching_run(tmp_path, monkeypatch, rng):
    from kappadiff.stages import posterior

    calls = []

    def fake_sample_patch(data, model, output, config, patch_id, threads=1, scaling=None):
        calls.append((config, scaling))
        return output

    monkeypatch.setattr(posterior, "sample_patch", fake_sample_patch)
    config = _config()
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "o.fits", config, 3, "unscaled")
    s, scaling = calls[-1][0]["sampling"], calls[-1][1]
    assert (scaling.scaled, s["n_samples"], s["n_steps"], s["save_samples"]) == (
        False,
        8,
        3,
        "float32",
    )
    assert config["sampling"]["n_samples"] == 4  # the caller's config is left alone

    cand = tmp_path / "cand.fits"
    write_run(cand, rng.normal(size=(2, N_BINS, 16, 16)), {"scaled": True, "t_bar": 500.0,
                                                           "sigma_t": 20.0})  # fmt: skip
    scaling_path = tmp_path / "scaling.fits"
    products.write_table(scaling_path, {"bin": np.arange(1, 5), "t_bar": np.full(4, 500.0),
                                        "sigma_t": np.full(4, 20.0)})  # fmt: skip
    out = tmp_path / "tuned.fits"
    scaling_search.sample_mock("d.fits", "m.pt", out, config, 3, "tuned",
                               scaling_path=scaling_path, candidate_paths=[cand])  # fmt: skip
    assert len(calls) == 1  # copied, not drawn again
    assert out.read_bytes() == cand.read_bytes()

    products.write_table(scaling_path, {"bin": np.arange(1, 5), "t_bar": np.full(4, 400.0),
                                        "sigma_t": np.full(4, 20.0)})  # fmt: skip
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "t2.fits", config, 3, "tuned",
                               scaling_path=scaling_path, candidate_paths=[cand])  # fmt: skip
    assert list(calls[-1][1].t_bar) == [400.0] * 4
    # a grid candidate's scaling is its name
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "g.fits", config, 3, "t950_s20")
    assert calls[-1][1] == LikelihoodScaling((950.0,), (20.0,))
    # the tuned run without the chosen scaling has no scaling to draw with
    with pytest.raises(ValueError, match="neither"):
        scaling_search.sample_mock("d", "m", "o", config, 0, "tuned")


def test_sample_mock_params_hold_what_the_sampler_reads_and_nothing_else(monkeypatch, tmp_path):
    from kappadiff.stages import posterior

    calls = []
    monkeypatch.setattr(posterior, "sample_patch", lambda *a, **k: calls.append(a[3]))
    config = _config()
    params = scaling_search.sample_mock_params(config)
    # the sampler runs on the params alone (the rule hands it nothing else) ...
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "o.fits", params, 3, "unscaled")
    full = []
    monkeypatch.setattr(posterior, "sample_patch", lambda *a, **k: full.append(a[3]))
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "o.fits", config, 3, "unscaled")
    assert calls[0]["sampling"] == full[0]["sampling"]
    # ... they change with the sampler's settings ...
    for key, value in (("n_steps", 4), ("n_samples", 16)):
        assert scaling_search.sample_mock_params(_config(**{key: value})) != params
    changed = _config()
    changed["sampling"]["eta"] = 0.5
    assert scaling_search.sample_mock_params(changed) != params
    # ... and not with the grid, the statistics or the patch lists, so adding a candidate or
    # a mock patch does not rerun the existing runs
    other = _config(t_bar=[300, 500, 750], n_bootstrap=10, patches=[0, 1, 2], n_ell_bins=8)
    other["sampling"]["patches"] = [5]
    assert scaling_search.sample_mock_params(other) == params


def _tiny_prior(path):
    """A checkpoint of an untrained 16 px, 4-bin prior (κ scale 0.02)."""
    import torch

    from kappadiff.diffusion.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from kappadiff.diffusion.data import Normalisation
    from kappadiff.diffusion.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNetConfig(in_channels=N_BINS, base_channels=8, channel_mults=(1, 2),
                      num_res_blocks=1, attention_levels=(1,))  # fmt: skip
    norm = Normalisation("affine", torch.zeros(N_BINS), torch.full((N_BINS,), 0.02),
                         torch.zeros(N_BINS))  # fmt: skip
    state = {"format": CHECKPOINT_FORMAT, "unet": unet.to_dict(), "ema": UNet(unet).state_dict(),
             "schedule": {"name": "sigmoid", "T": 1000}, "normalisation": norm.to_dict(),
             "npix": 16, "step": 0}  # fmt: skip
    save_checkpoint(path, state)
    return path


def test_draw_tarp_references_from_a_tiny_prior(tmp_path):
    model = _tiny_prior(tmp_path / "model.pt")
    config = _config()
    a = prior_stage.draw_tarp_references(model, tmp_path / "a.fits", config)
    b = prior_stage.draw_tarp_references(model, tmp_path / "b.fits", config)
    ka = products.read_images(a, ["KAPPA"])[0]["KAPPA"]
    assert ka.shape == (2, N_BINS, 16, 16) and np.all(np.isfinite(ka))
    np.testing.assert_array_equal(ka, products.read_images(b, ["KAPPA"])[0]["KAPPA"])
    with pytest.raises(ValueError, match="layout.npix = 32"):
        prior_stage.draw_tarp_references(model, tmp_path / "c.fits", _config(npix=32))


def test_compare_prior_measures_the_power_ratio(rng):
    sims = rng.normal(size=(20, N_BINS, 16, 16))
    edges = stats.log_ell_bins(16, 16.0, 6)
    pdf_edges = np.tile(np.linspace(-8, 8, 11), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-2, 8, 6), (N_BINS, 1))
    res = stats.compare_prior(2.0 * sims, sims, 16.0, edges, pdf_edges, peak_edges)
    # the same maps at twice the amplitude: exactly 4x the power, the same peaks per map
    np.testing.assert_allclose(res["prior"]["cl"] / res["simulations"]["cl"], 4.0, rtol=1e-12)
    np.testing.assert_allclose(res["prior"]["cl_err"], 4.0 * res["simulations"]["cl_err"])
    assert res["prior"]["peaks"].sum() == pytest.approx(res["simulations"]["peaks"].sum(), rel=0.3)
    # the simulations' C_l from separately given spectra, when there are more of them
    more = np.full((50, N_BINS, len(res["prior"]["ell"])), 3.0)
    res2 = stats.compare_prior(2.0 * sims, sims, 16.0, edges, pdf_edges, peak_edges, more)
    np.testing.assert_array_equal(res2["simulations"]["cl"], 3.0)
    np.testing.assert_array_equal(res2["simulations"]["cl_err"], 0.0)
    np.testing.assert_array_equal(res2["prior"]["cl"], res["prior"]["cl"])
    # a wider PDF: less density in the centre bin
    centre = pdf_edges.shape[1] // 2 - 1
    assert np.all(res["prior"]["pdf"][:, centre] < res["simulations"]["pdf"][:, centre])


def test_prior_statistics_writes_the_table_and_figure(tmp_path, rng):
    model = _tiny_prior(tmp_path / "model.pt")
    config = _config(n_prior_draws=3)
    cutouts = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path in cutouts:
        np.save(path, 0.02 * rng.normal(size=(2, N_BINS, 16, 16)).astype(np.float32))
    res = statistics.prior_statistics(
        model, cutouts, tmp_path / "prior.fits", tmp_path / "prior.png", config
    )
    assert res["prior"]["cl"].shape == res["simulations"]["cl"].shape
    with fits.open(tmp_path / "prior.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["SPECTRA", "PDF", "PEAKS"]
        assert hdul[0].header["NDRAW"] == 3 and hdul[0].header["NSIM"] == 3
        assert hdul[0].header["NSIMCL"] == 4  # every cut-out's C_l
        spectra = hdul["SPECTRA"].data
        assert spectra.columns.names == ["source", "bin", "ell", "cl", "cl_err"]
        assert hdul["PEAKS"].data.columns.names == ["source", "bin", "kappa", "count"]
        assert set(spectra["source"]) == {"prior", "simulations"}
        assert np.all(np.isfinite(spectra["cl"])) and np.all(spectra["cl"] > 0)
    assert (tmp_path / "prior.png").stat().st_size > 10_000
    config = _config(n_prior_draws=5)
    with pytest.raises(ValueError, match="5 cut-outs wanted, 4 in 2 files"):
        statistics.prior_statistics(model, cutouts, tmp_path / "p.fits", tmp_path / "p.png", config)


def test_validate_statistics_writes_tables_and_figures(tmp_path, rng):
    config = _config()
    n_patch = 2
    truth, samples = gaussian_maps(rng, n_patch, 4)
    files = {k: [] for k in ("tuned", "truth", "data", "ks", "wiener", "wiener_tomo")}
    for p in range(n_patch):
        files["tuned"].append(tmp_path / f"tuned_{p}.fits")
        write_run(files["tuned"][-1], samples[:, p], {"scaled": True, "t_bar": 500, "sigma_t": 20})
        for k, m in (("truth", truth[p]), ("ks", truth[p] + rng.normal(size=truth[p].shape)),
                     ("wiener", 0.5 * truth[p]), ("wiener_tomo", 0.8 * truth[p])):  # fmt: skip
            files[k].append(tmp_path / f"{k}_{p}.fits")
            write_kappa(files[k][-1], m)
        files["data"].append(tmp_path / f"data_{p}.fits")
        products.write_fits(
            files["data"][-1],
            [products.image_hdu("MASK", np.ones_like(truth[p]))],
            primary_header=products.provenance(None, **IDENTITY),
        )
    # training cut-outs of twice the truth's amplitude: 4x its power at every l
    cutouts = tmp_path / "cutouts.npy"
    np.save(cutouts, 2.0 * np.sqrt(5.0) * rng.normal(size=(40, N_BINS, 16, 16)).astype(np.float32))
    out = {k: tmp_path / f"{k}" for k in ("table.fits", "summary.csv", "maps.png", "stats.png")}
    res = statistics.validate_statistics(
        files["tuned"], files["truth"], files["data"], files["ks"], files["wiener"],
        files["wiener_tomo"], [cutouts],
        out["table.fits"], out["summary.csv"], out["maps.png"], out["stats.png"], config,
    )  # fmt: skip
    # a Wiener map that is half the truth correlates perfectly with it
    np.testing.assert_allclose(res["wiener"]["rho"], 1.0, atol=1e-12)
    lines = out["summary.csv"].read_text().splitlines()
    assert lines[0].startswith(
        "bin,ell_half_samples,ell_half_mean,ell_half_wiener,ell_half_wiener_tomo,ell_half_ks"
    )
    assert len(lines) == 1 + N_BINS
    summary = Table.read(out["summary.csv"], format="ascii.csv")
    # the perfect Wiener map leads the posterior mean (of 4 noisy samples) at high l in every
    # patch resampling, so even the 2.5th percentile of mean - Wiener is negative
    np.testing.assert_allclose(summary["rho_high_wiener"], 1.0, atol=1e-12)
    assert np.all(summary["rho_high_mean"] < 1.0)
    assert np.all(summary["rho_high_mean_minus_wiener_p2.5"] < 0.0)
    # so does the tomographic map (0.8 x truth); its l_0.5 is NaN (rho never falls to 0.5)
    np.testing.assert_allclose(summary["rho_high_wiener_tomo"], 1.0, atol=1e-12)
    assert np.all(np.isnan(summary["ell_half_ratio_mean_wiener_tomo"]))
    # truth (pixel variance 5) against the 4x ensemble: C_l ratio 1/4, outside the band of
    # 2-patch averages in every l bin but the lowest two, whose few modes (16 px patches)
    # scatter too widely; the max over l of |ratio - 1| is 0.75 plus that scatter
    n_ell = len(res["truth"]["ell"])
    assert np.all(summary["n_ell_truth_outside_band"] >= n_ell - 2)
    dev = summary["max_abs_cl_truth_ensemble_minus_1"]
    assert np.all((dev > 0.7) & (dev < 0.95))
    with fits.open(out["table.fits"]) as hdul:
        ens = hdul["ENSEMBLE"].data
        ratio = res["truth"]["cl"].ravel() / ens["cl"]  # rows ordered bin-major, as cl
        assert abs(np.median(ratio) - 0.25) < 0.05
        assert np.all(ens["cl_lo"] < ens["cl"]) and np.all(ens["cl"] < ens["cl_hi"])
        assert [h.name for h in hdul[1:]] == ["SPECTRA", "PDF", "PEAKS", "ELLHALF", "ENSEMBLE"]
        assert set(hdul["ELLHALF"].data["method"]) == set(statistics.METHODS)
        assert len(hdul["ENSEMBLE"].data) == N_BINS * n_ell
        assert hdul[0].header["NCUTOUT"] == 40
    assert out["maps.png"].stat().st_size > 10_000 and out["stats.png"].stat().st_size > 10_000


def test_ensemble_power_band_is_the_scatter_of_patch_set_means(rng):
    # per-patch C_l of a white field: chi^2-like scatter about 1 with 10 % rms
    cl = 1.0 + 0.1 * rng.standard_normal(size=(4000, 2, 5))
    band4 = stats.ensemble_power_band(cl, 4, n_draws=4000, seed=1)
    band16 = stats.ensemble_power_band(cl, 16, n_draws=4000, seed=1)
    np.testing.assert_allclose(band4["cl"], cl.mean(axis=0))
    # 95 % of means of n: 1 +- 1.96 * 0.1 / sqrt(n) (a few % of Monte-Carlo error)
    np.testing.assert_allclose(band4["cl_hi"] - 1.0, 1.96 * 0.05, rtol=0.1)
    np.testing.assert_allclose(1.0 - band16["cl_lo"], 1.96 * 0.025, rtol=0.1)
    with pytest.raises(ValueError, match="17 patches from 16 cut-outs"):
        stats.ensemble_power_band(cl[:16], 17)


def test_truth_peaks_are_the_highest(rng):
    kappa = rng.normal(size=(N_BINS, 16, 16))
    kappa[2, 5, 7] = 10.0
    kappa[2, 11, 3] = 8.0
    peaks = stats.truth_peaks(kappa, 2)
    row, col, height = peaks[2]
    np.testing.assert_array_equal(row, [5, 11])
    np.testing.assert_array_equal(col, [7, 3])
    np.testing.assert_array_equal(height, [10.0, 8.0])


def test_patch_figure_with_truth_peaks_and_a_cluster_catalogue(tmp_path, rng):
    config = _config()
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
    figures.patch_figure(*args, cat, tmp_path / "b.png", _config(clusters=str(cat)))
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
    out = figures.mosaic_figure(*files, tmp_path / "m.png", _config())
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="mosaic_bin = 5"):
        figures.mosaic_figure(*files, tmp_path / "x.png", _config(mosaic_bin=5))
