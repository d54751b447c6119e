"""Annealed split Gibbs: the exact data step, the prior step, and the whole sampler against
the exact posterior of a Gaussian prior."""

import numpy as np
import pytest
import torch

from kappadiff.diffusion.dps import shear_data
from kappadiff.diffusion.gaussian import GaussianDenoiser, GaussianPosterior, draw_gaussian
from kappadiff.diffusion.process import make_schedule
from kappadiff.diffusion.split_gibbs import (
    DenoiserCovariance,
    ExactDataStep,
    SplitGibbsPlan,
    _ring_index,
    annealing_levels,
    estimate_denoiser_covariance,
    noise_floor,
    noise_level,
    patch_sampler,
    prior_step,
    split_gibbs_sample,
)
from kappadiff.lensing import kappa_to_shear

SCHEDULE = make_schedule()


def power_law_cov(n: int, bins: int, slope: float = 1.5, mixing: float = 0.8) -> np.ndarray:
    """``P(k) [n, n, bin, bin]`` of a field of unit pixel variance, bins mixed by ``mixing``."""
    k = np.fft.fftfreq(n) * n
    kk = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    p = 1.0 / np.maximum(kk, 0.5) ** slope
    p[0, 0] = 0.0
    p *= n**4 / p.sum()
    mix = np.full((bins, bins), mixing) + (1 - mixing) * np.eye(bins)
    return p[..., None, None] * mix


def analytic_covariance(cov: np.ndarray, rhos: np.ndarray) -> DenoiserCovariance:
    """``Γ(ρ)`` of the Gaussian field, ring-averaged: ``(P − P (P + ρ² n²)⁻¹ P)/n²``."""
    n, bins = cov.shape[0], cov.shape[-1]
    ring = _ring_index(n)
    rings = []
    for rho in rhos:
        g = (cov - cov @ np.linalg.inv(cov + (rho * n) ** 2 * np.eye(bins)) @ cov).real / n**2
        rings.append([g[ring == q].mean(axis=0) for q in range(ring.max() + 1)])
    return DenoiserCovariance(np.asarray(rhos), np.asarray(rings), n)


def toy_problem(n=16, bins=2, sigma=0.03, pad=4, seed=1):
    cov = power_law_cov(n, bins)
    rng = np.random.default_rng(seed)
    x_true = draw_gaussian(cov, 1, rng)[0]
    scale = torch.tensor([0.01, 0.02][:bins])
    offset = torch.tensor([0.0, 0.001][:bins])
    kappa = x_true * scale.numpy()[:, None, None] + offset.numpy()[:, None, None]
    g1, g2 = kappa_to_shear(kappa, pad=pad)
    sig = np.full((bins, n, n), sigma)
    mask = np.ones((bins, n, n))
    mask[:, 2:6, 3:9] = 0
    g1 = g1 + sigma * rng.standard_normal(g1.shape)
    g2 = g2 + sigma * rng.standard_normal(g2.shape)
    return cov, shear_data(g1, g2, sig, mask), scale, offset


def dense_operator(step: ExactDataStep, shape) -> np.ndarray:
    """``A`` as a dense matrix from real κ (all bins) to (γ1, γ2) stacked."""
    size = int(np.prod(shape))
    cols = []
    for i in range(size):
        e = torch.zeros(size, dtype=torch.float64)
        e[i] = 1
        g = step.forward(e.view(shape))
        cols.append(torch.cat([g.real.flatten(), g.imag.flatten()]).numpy())
    return np.stack(cols, axis=1)


def test_data_step_is_the_exact_gaussian_conditional():
    # the mean (no generator) solves (λ + AᵀWA) κ = λ κ(x) + AᵀWγ exactly (dense solve), and
    # draws scatter with its inverse: CG tolerance 1e-10 makes the mean exact to 1e-7; 4000
    # draws give each variance to 2.2 % (1σ), so 12 % is > 5σ
    cov, data, scale, offset = toy_problem(n=8, bins=2, pad=2)
    step = ExactDataStep(data, scale, offset, pad=2, tol=1e-10, max_iter=1000)
    shape = (2, 8, 8)
    a = dense_operator(step, shape)
    w = np.concatenate([data.weight.double().flatten().numpy()] * 2)
    gamma = np.concatenate([data.g1.double().flatten().numpy(), data.g2.double().flatten().numpy()])
    rho = 0.7
    x = torch.from_numpy(np.random.default_rng(3).standard_normal(shape))
    s = np.repeat(scale.double().numpy(), 64)
    lam = 1.0 / (s * rho) ** 2
    hess = np.diag(lam) + a.T @ (w[:, None] * a)
    kappa_x = s * x.flatten().numpy() + np.repeat(offset.double().numpy(), 64)
    kappa = np.linalg.solve(hess, lam * kappa_x + a.T @ (w * gamma))
    expected_mean = (kappa - np.repeat(offset.double().numpy(), 64)) / s
    mean = step.conditional(x, rho).flatten().numpy()
    np.testing.assert_allclose(mean, expected_mean, rtol=0, atol=1e-7 * np.abs(expected_mean).max())

    draws = step.conditional(x.expand(4000, *shape).clone(), rho, torch.Generator().manual_seed(0))
    var = draws.reshape(4000, -1).var(dim=0).numpy()
    expected_var = np.diag(np.linalg.inv(hess)) / s**2
    np.testing.assert_allclose(var, expected_var, rtol=0.12)


def test_denoiser_covariance_of_a_gaussian_field_is_analytic():
    # the network's measured error spectrum for the exact Gaussian denoiser is the posterior
    # covariance per mode; 256 maps give each ring (≥ 4 modes, most ≥ 20) to ≲ 10 %, and the
    # power-weighted mean over rings to a few %
    n, bins = 16, 2
    cov = power_law_cov(n, bins)
    denoiser = GaussianDenoiser(cov, SCHEDULE)
    rho = noise_level(SCHEDULE)
    levels = [int(np.argmin(np.abs(rho - r))) for r in (0.1, 1.0, 5.0)]
    maps = torch.from_numpy(draw_gaussian(cov, 256, np.random.default_rng(2))).float()
    est = estimate_denoiser_covariance(
        denoiser, SCHEDULE, maps, levels, torch.Generator().manual_seed(4), batch_size=64
    )
    exact = analytic_covariance(cov, est.rho)
    for i in range(len(levels)):
        got, want = est.rings[i, 1:, 0, 0], exact.rings[i, 1:, 0, 0]
        assert np.sum(got) == pytest.approx(np.sum(want), rel=0.05)
        np.testing.assert_allclose(got, want, rtol=0.3)
    # interpolation in log ρ reproduces a tabulated level, and scales as ρ² below the grid
    np.testing.assert_allclose(est.at(float(est.rho[1])), est.rings[1])
    np.testing.assert_allclose(est.at(float(est.rho[0]) / 2), est.rings[0] / 4)


@pytest.mark.parametrize("n_steps", [1, 3])
def test_prior_step_draws_the_denoising_posterior(n_steps):
    # x | z for z = x + ρ ε: mean P/(P + ρ²) z and variance Pρ²/(P + ρ²) per mode, for one
    # network call or three (ancestral DDIM with the same calls keeps 10–35 % of the
    # variance in three steps); 2000 draws give ring variances to ≈ 3 %, tolerance 10 %
    n = 16
    cov = power_law_cov(n, 1)
    denoiser = GaussianDenoiser(cov, SCHEDULE)
    rho_of = noise_level(SCHEDULE)
    t = int(np.argmin(np.abs(rho_of - 1.0)))
    steps = [t] + ([int(np.argmin(np.abs(rho_of - 0.3))), int(np.argmin(np.abs(rho_of - 0.1)))]
                   if n_steps == 3 else [])  # fmt: skip
    gamma = analytic_covariance(cov, np.geomspace(0.01, 10, 60))
    z = torch.from_numpy(draw_gaussian(cov, 1, np.random.default_rng(5))).float()
    draws = prior_step(
        denoiser, SCHEDULE, gamma, z.expand(2000, 1, n, n).clone(), steps,
        torch.Generator().manual_seed(6),
    )  # fmt: skip
    exact = analytic_covariance(cov, [float(rho_of[t])])
    f = torch.fft.fft2(draws.double()).numpy()[:, 0]
    ring = _ring_index(n)
    var = np.abs(f - f.mean(axis=0)) ** 2
    got = np.array([var[:, ring == q].mean() for q in range(1, ring.max() + 1)]) / n**2
    np.testing.assert_allclose(got, exact.rings[0, 1:, 0, 0], rtol=0.1)
    p = cov[..., 0, 0].real
    r2 = float(rho_of[t]) ** 2 * n**2
    mean_expected = np.fft.ifft2(p / (p + r2) * np.fft.fft2(z[0, 0].double().numpy())).real
    resid = draws.double().mean(dim=0)[0].numpy() - mean_expected
    assert np.sqrt(np.mean(resid**2)) < 4 * np.sqrt(exact.rings[0, :, 0, 0].mean() / 2000)


def gaussian_chains(cov, step, plan, n_chains):
    """``n_chains`` split-Gibbs draws ``[n, 2, 16, 16]`` with the exact denoiser of ``cov``."""
    gamma = analytic_covariance(cov, np.geomspace(0.005, 30, 40))
    return split_gibbs_sample(
        GaussianDenoiser(cov, SCHEDULE), SCHEDULE, gamma, step, (n_chains, 2, 16, 16), plan,
        torch.Generator().manual_seed(1),
    ).double()  # fmt: skip


def test_split_gibbs_matches_the_exact_gaussian_posterior():
    # with the exact Gaussian denoiser and its analytic covariance, the sampler's spread and
    # mean are the exact posterior's: 256 chains give a per-pixel std to 4.4 % (1σ), so the
    # median of the ratio is within 3 % of 1 (a sampler that drops the prior step's variance
    # gives 0.7–0.9); the mean of 256 draws correlates with the exact mean to ≥ 0.98
    cov, data, scale, offset = toy_problem(n=16, bins=2, pad=4)
    post = GaussianPosterior(cov, data, scale, offset, pad=4)
    exact = post.draws(512, torch.Generator().manual_seed(0))
    step = ExactDataStep(data, scale, offset, pad=4)
    plan = SplitGibbsPlan.make(SCHEDULE, 40, 10.0, 0.1, 1)
    xs = gaussian_chains(cov, step, plan, 256)
    ratio = (xs.std(dim=0) / exact.std(dim=0)).flatten()
    assert float(ratio.median()) == pytest.approx(1.0, abs=0.03)
    mean = post.mean()
    for b in range(2):
        rho = np.corrcoef(xs.mean(dim=0)[b].flatten(), mean[b].flatten())[0, 1]
        assert rho > 0.98
    assert plan.nfe == 41 and min(step.iterations) >= 1


def test_prior_step_stopped_early_draws_the_noisy_map():
    # stopped at ρ_s, the draw is u = x + ρ_s ε' given z = x + ρ ε; for a Gaussian prior of
    # mode variance P, Var[u | z] = (P + ρ_s²)(ρ² − ρ_s²)/(P + ρ²) = ρ_s² (1 − r²) +
    # (1 − r²)² Γ(ρ), r = ρ_s/ρ. 2000 draws give ring variances to ≈ 3 %, tolerance 10 %
    # (a walk that jumped to the clean map instead misses the ρ_s² term: 15–95 % of it)
    n = 16
    cov = power_law_cov(n, 1)
    denoiser = GaussianDenoiser(cov, SCHEDULE)
    rho_of = noise_level(SCHEDULE)
    steps = [int(np.argmin(np.abs(rho_of - r))) for r in (1.0, 0.6, 0.3)]
    gamma = analytic_covariance(cov, np.geomspace(0.01, 10, 60))
    z = torch.from_numpy(draw_gaussian(cov, 1, np.random.default_rng(5))).float()
    draws = prior_step(
        denoiser, SCHEDULE, gamma, z.expand(2000, 1, n, n).clone(), steps,
        torch.Generator().manual_seed(6), to_clean=False,
    )  # fmt: skip
    rho, rho_s = float(rho_of[steps[0]]), float(rho_of[steps[-1]])
    r2 = (rho_s / rho) ** 2
    want = rho_s**2 * (1 - r2) + (1 - r2) ** 2 * analytic_covariance(cov, [rho]).rings[0, 1:, 0, 0]
    f = torch.fft.fft2(draws.double()).numpy()[:, 0]
    ring = _ring_index(n)
    var = np.abs(f - f.mean(axis=0)) ** 2
    got = np.array([var[:, ring == q].mean() for q in range(1, ring.max() + 1)]) / n**2
    np.testing.assert_allclose(got, want, rtol=0.1)


def test_plan_counts_calls_and_refuses_a_stop_above_the_next_level():
    # 10 sweeps of 12 calls stopping at 0.2 ρ, the last one's jump to x_0 one call more;
    # each stop lies below the next level (its data step adds noise ρ'² − ρ_s² > 0)
    plan = SplitGibbsPlan.make(SCHEDULE, 10, 10.0, 0.1, 12, 0.2)
    assert plan.nfe == 10 * 12 + 1
    assert all(s[-1] < t for s, t in zip(plan.sweeps, plan.levels[1:], strict=False))
    with pytest.raises(ValueError, match="next level"):
        SplitGibbsPlan.make(SCHEDULE, 10, 10.0, 0.1, 4, 0.9)  # levels 0.6 ρ apart


def test_deflated_data_step_and_the_patch_floor():
    # the floor is min σ/s_b over observed pixels (σ = 0.03, s = 0.01, 0.02: 1.5), and the
    # deflated step is the plain step of the data with σ² lowered by (s_b ρ_d)²: same mean
    cov, data, scale, offset = toy_problem(n=8, bins=2, pad=2)
    assert noise_floor(data, scale) == pytest.approx(1.5, rel=1e-6)
    rho_d = 0.9
    deflated = ExactDataStep(data, scale, offset, pad=2, tol=1e-10, deflation=rho_d)
    sigma2 = 0.03**2 - (scale.double().view(-1, 1, 1) * rho_d) ** 2
    weight = torch.where(data.weight > 0, 1.0 / sigma2, 0.0)
    plain = ExactDataStep(
        type(data)(data.g1, data.g2, weight, data.n_obs), scale, offset, pad=2, tol=1e-10
    )
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 2, 8, 8)))
    # float32 weights in ShearData: agreement to 1e-5
    np.testing.assert_allclose(deflated.conditional(x, 0.7), plain.conditional(x, 0.7), rtol=1e-5)
    with pytest.raises(ValueError, match="smallest shear noise"):
        ExactDataStep(data, scale, offset, deflation=1.6)
    with pytest.raises(ValueError, match="floor_fraction"):
        patch_sampler(
            data, scale, offset, SCHEDULE, sweeps=4, rho_start=10.0, floor_fraction=1.0,
            prior_steps=2, last_ratio=0.5, final_steps=4, final_rho=0.01,
        )  # fmt: skip


def test_deflated_floor_mixes_in_ten_sweeps():
    # with the floor at half the noise and the data step deflated to match, 10 sweeps reach
    # the exact posterior: over 512 chains the sample mean's rms offset from the exact mean
    # is 0.09 posterior std (Monte-Carlo floor 1/√512 = 0.044), where the same 10
    # sweeps down to ρ = 0.1 without deflation leave 0.18 (the chain freezes at small ρ
    # before the mean has moved); std ratio median within 3 % of 1 (4.4 % per pixel)
    cov, data, scale, offset = toy_problem(n=16, bins=2, pad=4)
    post = GaussianPosterior(cov, data, scale, offset, pad=4)
    exact = post.draws(1024, torch.Generator().manual_seed(0))
    plan, step = patch_sampler(
        data, scale, offset, SCHEDULE, sweeps=10, rho_start=10.0, floor_fraction=0.5,
        prior_steps=1, last_ratio=0.1, final_steps=4, final_rho=0.01, pad=4,
    )  # fmt: skip
    assert step.deflation == pytest.approx(0.75, rel=0.03) and plan.nfe == 9 + 4
    xs = gaussian_chains(cov, step, plan, 512)
    ratio = (xs.std(dim=0) / exact.std(dim=0)).flatten()
    assert float(ratio.median()) == pytest.approx(1.0, abs=0.03)
    offset_rms = ((xs.mean(dim=0) - post.mean()) / exact.std(dim=0)).pow(2).mean().sqrt()
    assert float(offset_rms) < 0.12


def test_annealing_levels_fall_geometrically_to_the_floor():
    levels = annealing_levels(SCHEDULE, 30, 10.0, 0.1)
    rho = noise_level(SCHEDULE)[levels]
    assert len(levels) == 30 and all(a >= b for a, b in zip(levels, levels[1:], strict=False))
    assert rho[0] == pytest.approx(10.0, rel=0.05) and rho[-1] == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match="rho_floor"):
        annealing_levels(SCHEDULE, 10, 0.1, 1.0)


def test_gaussian_posterior_is_the_kriging_solution():
    # the exact reference itself, against the data-space (Woodbury) form of the Gaussian
    # posterior, m = C Sᵀ Aᵀ (A S C S Aᵀ + N)⁻¹ (γ − A κ₀), restricted to the observed
    # pixels: an independent formula; CG tolerance 1e-10 gives the mean to 1e-7, and 4000
    # draws the variances to 2.2 % (tolerance 12 %)
    n = 8
    cov, data, scale, offset = toy_problem(n=n, bins=2, pad=2)
    post = GaussianPosterior(cov, data, scale, offset, pad=2, tol=1e-10)
    size = 2 * n * n
    eye = torch.eye(size, dtype=torch.float64).view(size, 2, n, n)
    root = post.sqrt_prior(eye).reshape(size, size).numpy().T  # columns: P^{1/2} e_i
    c = root @ root.T
    a = dense_operator(post.op, (2, n, n))
    observed = np.concatenate([data.weight.double().flatten().numpy() > 0] * 2)
    a = a[observed]
    s = np.repeat(scale.double().numpy(), n * n)
    noise = np.concatenate([data.weight.double().flatten().numpy()] * 2)[observed] ** -1.0
    gamma = np.concatenate([data.g1.double().flatten().numpy(), data.g2.double().flatten().numpy()])
    k0 = np.repeat(offset.double().numpy(), n * n)
    gain = (
        c
        @ (s[:, None] * a.T)
        @ np.linalg.inv(a @ (s[:, None] * c * s[None]) @ a.T + np.diag(noise))
    )
    mean = gain @ (gamma[observed] - a @ k0)
    np.testing.assert_allclose(post.mean().flatten().numpy(), mean, atol=1e-7 * np.abs(mean).max())
    var = np.diag(c - gain @ a @ (s[:, None] * c))
    draws = post.draws(4000, torch.Generator().manual_seed(3)).reshape(4000, -1).numpy()
    np.testing.assert_allclose(draws.var(axis=0), var, rtol=0.12)
