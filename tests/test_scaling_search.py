"""The likelihood-scaling search on mock runs (kappadiff.stages.scaling_search): TARP of
the runs (kappadiff.tarp.tarp_inputs), the choice written to scaling.fits, figure 1, and the
sampling of the mocks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from validation_products import (
    N_BINS,
    gaussian_maps,
    validation_config,
    write_candidates,
    write_kappa,
    write_masks,
    write_run,
)

from kappadiff import products, tarp
from kappadiff.scaling import LikelihoodScaling, read_scaling
from kappadiff.stages import scaling_search


def test_tarp_of_runs_separates_calibrated_and_overconfident(rng):
    config = validation_config()
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
    config = validation_config()
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
        {"tuned": paths["t500_s20"], "unscaled": paths["unscaled"]}, out, truth_paths,
        data_paths, ref_path,
        tmp_path / "tarp_coverage.fits", fig, config,
    )  # fmt: skip
    assert fig.stat().st_size > 10_000
    with fits.open(tmp_path / "tarp_coverage.fits") as hdul:
        summary = hdul["SUMMARY"].data
        tuned = summary[(summary["run"] == "tuned") & (summary["bin"] == 0)]
        assert np.all(tuned["t_bar"] == 500.0)


def test_search_scaling_prefers_the_informative_calibrated_run(tmp_path, rng):
    """Prior samples pass TARP with prior references; the search must not take them."""
    config = validation_config()
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
    config0 = validation_config(tarp_tolerance=0.0)
    scaling_search.search_scaling(
        paths, truth_paths, data_paths, tmp_path / "refs.fits",
        tmp_path / "scaling0.fits", tmp_path / "search0.fits", config0,
    )  # fmt: skip
    best = min(err, key=err.get)
    assert list(read_scaling(tmp_path / "scaling0.fits").t_bar) == [float(best[1:4])] * N_BINS


def test_search_scaling_ranks_calibrated_runs_by_rho_not_pixel_error(tmp_path, rng):
    """A mean shrunk to 0.3 of the signal correlates with the truth better than a noisy one.

    Pixel error prefers the noisy mean ((1.5 + 1)/5 = 0.5 against (0.49·4 + 1)/5 ≈ 0.59);
    ρ_c prefers the shrunk one (0.89 against 4/√(5.5·5) ≈ 0.76).
    """
    # every candidate counts as calibrated (neither has the power of the truth)
    config = validation_config(tarp_tolerance=1.0, power_tolerance=100.0)
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
    config = validation_config(per_bin=True, power_tolerance=100.0)
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


@pytest.mark.parametrize("per_bin", [False, True])
def test_search_scaling_rejects_a_run_whose_samples_fit_the_noise(tmp_path, rng, per_bin):
    """A run whose samples scatter about the truth itself has the best mean but too much power.

    Truth = μ + n (power 4 + 1 = 5 a pixel). The posterior N(μ, 1) has the truth's power. The
    noise-fitting run, truth + 1.5 ε, has a mean that correlates better with the truth but
    power 5 + 2.25 = 7.25: 45 % high. With TARP out of the way (tolerance 1), ρ_c would
    choose it; the power check (0.3) must not. 8 patches of 32² px: the calibrated run's
    error is 0.03-0.14 over seeds (the lowest ℓ bin holds a few modes), the other's 0.41-0.67.
    """
    config = validation_config(npix=32, per_bin=per_bin, tarp_tolerance=1.0)
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
    chosen, _ = search(validation_config(npix=32, per_bin=per_bin, tarp_tolerance=1.0,
                               power_tolerance=100.0), "nopower")  # fmt: skip
    assert chosen == [975.0] * N_BINS


def test_sample_mock_overrides_sampling_and_reuses_a_matching_run(tmp_path, monkeypatch, rng):
    from kappadiff.stages import posterior

    calls = []

    def fake_sample_patch(data, model, output, config, patch_id, threads=1, scaling=None):
        calls.append((config, scaling))
        return output

    monkeypatch.setattr(posterior, "sample_patch", fake_sample_patch)
    config = validation_config()
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
    config = validation_config()
    params = scaling_search.sample_mock_params(config)
    # the sampler runs on the params alone (the rule hands it nothing else) ...
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "o.fits", params, 3, "unscaled")
    full = []
    monkeypatch.setattr(posterior, "sample_patch", lambda *a, **k: full.append(a[3]))
    scaling_search.sample_mock("d.fits", "m.pt", tmp_path / "o.fits", config, 3, "unscaled")
    assert calls[0]["sampling"] == full[0]["sampling"]
    # ... they change with the sampler's settings ...
    for key, value in (("n_steps", 4), ("n_samples", 16)):
        assert scaling_search.sample_mock_params(validation_config(**{key: value})) != params
    changed = validation_config()
    changed["sampling"]["eta"] = 0.5
    assert scaling_search.sample_mock_params(changed) != params
    # ... and not with the grid, the statistics or the patch lists, so adding a candidate or
    # a mock patch does not rerun the existing runs
    other = validation_config(
        t_bar=[300, 500, 750], n_bootstrap=10, patches=[0, 1, 2], n_ell_bins=8
    )
    other["sampling"]["patches"] = [5]
    assert scaling_search.sample_mock_params(other) == params
