"""TARP coverage and the likelihood-scaling choice (kappadiff.tarp)."""

from __future__ import annotations

import numpy as np
import pytest

from kappadiff.tarp import (
    bootstrap_coverage,
    choose_scaling,
    coverage_curve,
    max_coverage_error,
    prior_references,
    random_references,
    tarp_coverage,
    tarp_credibility,
    tarp_package_coverage,
    tarp_vectors,
)


def gaussian_problem(rng, n_sims=400, n_samples=16, n_dims=8, width=1.0, shift=0.0):
    """Truths and posterior samples of a toy Gaussian problem.

    Each simulation has a posterior N(μ_i, 1) per dimension and the truth is a draw from
    it; samples come from N(μ_i + shift, width²). width = 1, shift = 0 is calibrated.
    """
    mu = rng.normal(0.0, 3.0, size=(n_sims, n_dims))
    theta = mu + rng.normal(size=(n_sims, n_dims))
    samples = mu + shift + width * rng.normal(size=(n_samples, n_sims, n_dims))
    return samples, theta


def test_plain_credibility_matches_tarp_package(rng):
    samples, theta = gaussian_problem(rng, n_sims=200, n_samples=10)
    refs = random_references(theta, rng)
    f = tarp_credibility(samples, theta, refs)
    n_bins = 20
    ecp_pkg, alpha_pkg = tarp_package_coverage(samples, theta, refs, n_alpha_bins=n_bins)
    # tarp's cumulative histogram is the fraction of f below each bin edge; edges that fall
    # on one of the discrete values k/S can be assigned to either side by np.histogram's
    # rounding, so allow one simulation's worth at interior edges.
    ours = coverage_curve(f, alpha_pkg)
    ours[-1] = 1.0  # the last histogram bin is closed on the right
    np.testing.assert_allclose(ours, ecp_pkg, atol=1.0 / len(theta) + 1e-12)
    # and most edges agree exactly (not a vacuous tolerance)
    assert np.mean(np.abs(ours - ecp_pkg) < 1e-12) > 0.8


def test_tarp_package_wrapper_leaves_inputs_untouched(rng):
    samples, theta = gaussian_problem(rng, n_sims=50, n_samples=8, n_dims=3)
    refs = random_references(theta, rng)
    before = (samples.copy(), theta.copy(), refs.copy())
    ecp, alpha = tarp_package_coverage(
        samples, theta, refs, n_alpha_bins=5, bootstrap=True, n_bootstrap=20, seed=3
    )
    assert ecp.shape == (20, 6) and alpha.shape == (6,)
    for a, b in zip((samples, theta, refs), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_calibrated_gaussian_is_on_the_diagonal(rng):
    samples, theta = gaussian_problem(rng, n_sims=400, n_samples=8)
    res = tarp_coverage(samples, theta, random_references(theta, rng), rng, n_bootstrap=300)
    # Randomised credibility is exactly uniform for a calibrated posterior: ECP differs from α
    # only by binomial noise, sd ≤ 0.5/sqrt(400) = 0.025; the max over 21 levels stays < 4 sd.
    assert res.max_error < 0.1
    inside = (res.alpha >= res.ecp_lo - 0.03) & (res.alpha <= res.ecp_hi + 0.03)
    assert np.all(inside), "the diagonal leaves the bootstrap band by more than ~1 sd"
    # the band has the binomial width (16-84 % ≈ ±1 sd ≈ ±0.025 at α = 0.5)
    mid = len(res.alpha) // 2
    assert 0.02 < res.ecp_hi[mid] - res.ecp_lo[mid] < 0.08


def test_plain_estimator_bias_with_few_samples(rng):
    """With S samples the plain f = k/S is off the diagonal by ~1/(S+1) even when calibrated."""
    samples, theta = gaussian_problem(rng, n_sims=4000, n_samples=4)
    refs = random_references(theta, rng)
    alpha = np.linspace(0, 1, 41)
    plain = max_coverage_error(alpha, coverage_curve(tarp_credibility(samples, theta, refs), alpha))
    rand = max_coverage_error(
        alpha, coverage_curve(tarp_credibility(samples, theta, refs, rng=rng), alpha)
    )
    # 1/(S+1) = 0.2 structural step against binomial noise sd < 0.008 at 4000 sims
    assert plain > 0.15
    assert rand < 0.04
    # the same through tarp_coverage, whose plain figure comes from the tarp package on its
    # own α grid (edges every 0.05: ECP(0.05) = P(k = 0) = 0.2, off by 0.15)
    res = tarp_coverage(samples, theta, refs, rng, n_bootstrap=20)
    assert res.max_error < 0.04 < 0.12 < res.max_error_plain


@pytest.mark.parametrize(("width", "shift"), [(0.5, 0.0), (1.0, 1.5)])
def test_overconfident_is_visibly_off(rng, width, shift):
    samples, theta = gaussian_problem(rng, n_sims=400, n_samples=8, width=width, shift=shift)
    res = tarp_coverage(samples, theta, random_references(theta, rng), rng, n_bootstrap=100)
    # Too narrow or biased: the truth lies outside its sample cloud, so its distance to the
    # reference is more often the smallest or the largest: f piles up at both ends. Calibrated,
    # max |ECP - α| is ~0.05 at 400 sims (binomial sd 0.025) and 20 % of f lie in the outer
    # tenths (sd 0.02); these toys measure 0.15-0.24 and 41-46 %.
    assert res.max_error > 0.12
    assert np.mean((res.f < 0.1) | (res.f > 0.9)) > 0.35


def test_underconfident_is_above_diagonal(rng):
    samples, theta = gaussian_problem(rng, n_sims=400, n_samples=8, width=2.0)
    res = tarp_coverage(samples, theta, random_references(theta, rng), rng, n_bootstrap=50)
    mid = len(res.alpha) // 2
    assert res.ecp[mid] > res.alpha[mid] + 0.15


def test_prior_references_keep_calibrated_coverage(rng):
    samples, theta = gaussian_problem(rng, n_sims=400, n_samples=8)
    pool = rng.normal(0.0, 3.0, size=(60, theta.shape[1]))
    refs = prior_references(pool, len(theta), rng)
    assert refs.shape == theta.shape
    assert {tuple(r) for r in refs} <= {tuple(p) for p in pool}
    res = tarp_coverage(samples, theta, refs, rng, n_bootstrap=50)
    assert res.max_error < 0.1  # binomial sd 0.025, as in the calibrated test above


def test_random_references_in_bounding_box(rng):
    theta = rng.normal(size=(100, 5)) * np.arange(1, 6)
    refs = random_references(theta, rng)
    assert np.all(refs >= theta.min(axis=0)) and np.all(refs <= theta.max(axis=0))


def test_bootstrap_shape_and_centre(rng):
    f = rng.uniform(size=500)
    alpha = np.linspace(0, 1, 11)
    boot = bootstrap_coverage(f, alpha, 400, rng)
    assert boot.shape == (400, 11)
    # bootstrap mean equals the full-sample ECP to within its Monte Carlo error 0.02/sqrt(400)
    np.testing.assert_allclose(boot.mean(axis=0), coverage_curve(f, alpha), atol=5e-3)


def test_bad_shapes_and_values_raise(rng):
    samples, theta = gaussian_problem(rng, n_sims=10, n_samples=4, n_dims=2)
    with pytest.raises(ValueError, match="theta"):
        tarp_credibility(samples, theta[:5], theta[:5])
    with pytest.raises(ValueError, match="references"):
        tarp_credibility(samples, theta, theta[:, :1])
    theta_nan = theta.copy()
    theta_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        tarp_credibility(samples, theta_nan, theta)
    with pytest.raises(ValueError, match="metric"):
        tarp_credibility(samples, theta, theta, metric="cosine")


def test_tarp_vectors_against_loops(rng):
    maps = rng.normal(size=(3, 4, 16, 16))  # [sample, bin, row, col]
    vec = tarp_vectors(maps, n_regions=2, block=4)
    assert vec.shape == (3, 4, 4, 4)  # [sample, region, bin, blocks]
    for s in range(3):
        for ry in range(2):
            for rx in range(2):
                for b in range(4):
                    sub = maps[s, b, ry * 8 : (ry + 1) * 8, rx * 8 : (rx + 1) * 8]
                    means = sub.reshape(2, 4, 2, 4).mean(axis=(1, 3)).ravel()
                    np.testing.assert_allclose(vec[s, ry * 2 + rx, b], means, rtol=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        tarp_vectors(maps, n_regions=3, block=2)


def test_choose_scaling_joint_and_per_bin():
    cands = [(500.0, 20.0), (300.0, 20.0), (700.0, 50.0)]
    joint = choose_scaling(cands, np.array([0.2, 0.05, 0.3]), n_bin=4, per_bin=False)
    np.testing.assert_array_equal(joint.t_bar, [300.0] * 4)
    np.testing.assert_array_equal(joint.sigma_t, [20.0] * 4)
    np.testing.assert_array_equal(joint.max_error, [0.05] * 4)
    errs = np.array([[0.1, 0.3, 0.2, 0.05], [0.2, 0.1, 0.3, 0.05], [0.3, 0.2, 0.1, 0.4]])
    per = choose_scaling(cands, errs, n_bin=4, per_bin=True)
    np.testing.assert_array_equal(per.candidate, [0, 1, 2, 0])  # tie in bin 4 -> first
    np.testing.assert_array_equal(per.t_bar, [500.0, 300.0, 700.0, 500.0])
    np.testing.assert_array_equal(per.sigma_t, [20.0, 20.0, 50.0, 20.0])
    with pytest.raises(ValueError, match="shape"):
        choose_scaling(cands, errs, n_bin=4, per_bin=False)


def test_choose_scaling_takes_the_most_accurate_calibrated_run():
    cands = [(500.0, 20.0), (900.0, 20.0), (1000.0, 20.0)]
    # the first run is best calibrated but barely uses the data (prior-like, large loss)
    errors, loss = np.array([0.03, 0.08, 0.2]), np.array([1.0, 0.6, 0.4])
    joint = choose_scaling(cands, errors, 4, per_bin=False, loss=loss, tolerance=0.1)
    np.testing.assert_array_equal(joint.t_bar, [900.0] * 4)
    np.testing.assert_array_equal(joint.max_error, [0.08] * 4)
    # tolerance 0 (or no loss): calibration alone, as before
    assert choose_scaling(cands, errors, 4, False, loss, 0.0).t_bar[0] == 500.0
    assert choose_scaling(cands, errors, 4, False, None, 0.1).t_bar[0] == 500.0
    # nothing calibrated: fall back to the best calibrated run
    assert choose_scaling(cands, errors + 0.5, 4, False, loss, 0.1).t_bar[0] == 500.0
    # per bin: bin 2 has no calibrated run with a lower loss than run 0
    errs = np.array([[0.05, 0.05], [0.05, 0.3], [0.3, 0.3]])
    per = choose_scaling(cands, errs, 2, True, np.array([[3.0, 3.0], [2.0, 2.0], [1.0, 1.0]]), 0.1)
    np.testing.assert_array_equal(per.candidate, [1, 0])
    with pytest.raises(ValueError, match="loss has shape"):
        choose_scaling(cands, errors, 4, False, loss[:2], 0.1)


def test_choose_scaling_counts_only_admissible_runs_as_calibrated():
    cands = [(900.0, 20.0), (950.0, 20.0), (975.0, 20.0)]
    errors, loss = np.array([0.03, 0.03, 0.08]), np.array([0.7, 0.6, 0.5])
    ok = np.array([True, True, False])  # run 2 fails the power check
    np.testing.assert_array_equal(
        choose_scaling(cands, errors, 2, False, loss, 0.1).candidate, [2, 2]
    )
    np.testing.assert_array_equal(
        choose_scaling(cands, errors, 2, False, loss, 0.1, admissible=ok).candidate, [1, 1]
    )
    # nothing calibrated: the best TARP among the admissible runs, else among all
    worse = np.array([0.5, 0.4, 0.2])
    assert choose_scaling(cands, worse, 2, False, loss, 0.1, admissible=ok).candidate[0] == 1
    none = np.zeros(3, dtype=bool)
    assert choose_scaling(cands, worse, 2, False, loss, 0.1, admissible=none).candidate[0] == 2
    # per bin: bin 2 loses its most accurate calibrated run
    per_ok = np.array([[True, True], [True, True], [True, False]])
    per = choose_scaling(
        cands, np.full((3, 2), 0.05), 2, True, np.tile(loss[:, None], 2), 0.1, admissible=per_ok
    )
    np.testing.assert_array_equal(per.candidate, [2, 1])
    with pytest.raises(ValueError, match="admissible"):
        choose_scaling(cands, errors, 2, False, loss, 0.1, admissible=ok[:2])
    with pytest.raises(ValueError, match="admissible"):
        choose_scaling(cands, errors, 2, False, loss, 0.1, admissible=ok.astype(int))
