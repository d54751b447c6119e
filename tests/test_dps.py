"""Tests of kappadiff.diffusion.dps: the shear likelihood, A(t), the DPS step, the drift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kappadiff.diffusion.dps import (
    PAPER_SCALING,
    TrajectoryDiagnostic,
    chi2,
    dps_guidance,
    likelihood_scale,
    shear_data,
)
from kappadiff.diffusion.process import make_schedule
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.scaling import LikelihoodScaling

N = 16


def brute_shear(kappa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """γ1, γ2 from κ [n, n] by the flat-sky relations of DESIGN.md, written out per mode."""
    n = kappa.shape[-1]
    kh = np.fft.fft2(kappa)
    gh = np.zeros_like(kh)
    for j in range(n):
        for i in range(n):
            ly, lx = np.fft.fftfreq(n)[j], np.fft.fftfreq(n)[i]
            l2 = lx**2 + ly**2
            if l2 == 0:
                continue
            # complex kernel (ℓx + iℓy)²/ℓ² so that γ1 + iγ2 = ifft(D κ̂) exactly
            d = (lx + 1j * ly) ** 2 / l2
            gh[j, i] = d * kh[j, i]
    gamma = np.fft.ifft2(gh)
    return gamma.real, gamma.imag


def make_data(rng, n_bins=2, noise=0.05, mask_fraction=0.2, kappa_std=0.02):
    kappa = rng.normal(0, kappa_std, (n_bins, N, N))
    g = np.array([brute_shear(k) for k in kappa])  # [bin, 2, n, n]
    sigma = np.full((n_bins, N, N), noise) * rng.uniform(0.8, 1.2, (n_bins, N, N))
    mask = (rng.uniform(size=(n_bins, N, N)) > mask_fraction).astype(float)
    g1 = g[:, 0] + sigma * rng.normal(size=sigma.shape)
    g2 = g[:, 1] + sigma * rng.normal(size=sigma.shape)
    g1[mask == 0] = np.nan  # masked pixels may hold anything
    sigma[mask == 0] = 0.0
    return kappa, g1, g2, sigma, mask


def test_chi2_matches_brute_force_and_ignores_masked_pixels(rng):
    kappa, g1, g2, sigma, mask = make_data(rng)
    data = shear_data(g1, g2, sigma, mask)
    trial = kappa + rng.normal(0, 0.01, kappa.shape)
    got = chi2(torch.as_tensor(trial, dtype=torch.float32)[None], data)[0].numpy()
    want = []
    for b in range(len(trial)):
        s1, s2 = brute_shear(trial[b])
        obs = mask[b] == 1
        r2 = (g1[b] - s1) ** 2 + (g2[b] - s2) ** 2
        want.append(np.sum(r2[obs] / sigma[b][obs] ** 2))
    # float32 arithmetic on ~500 terms: 1e-4 relative
    np.testing.assert_allclose(got, want, rtol=1e-4)

    # values under the mask never enter
    g2_other = g2.copy()
    g2_other[mask == 0] = 1e3
    other = chi2(
        torch.as_tensor(trial, dtype=torch.float32)[None], shear_data(g1, g2_other, sigma, mask)
    )
    np.testing.assert_array_equal(other[0].numpy(), got)


def test_chi2_of_the_truth_follows_its_distribution(rng):
    kappa, g1, g2, sigma, mask = make_data(rng, n_bins=4, mask_fraction=0.1)
    data = shear_data(g1, g2, sigma, mask)
    c2 = chi2(torch.as_tensor(kappa)[None], data)[0].numpy()
    dof = data.dof.numpy()
    # chi2/dof has standard deviation sqrt(2/dof) ≈ 0.047 for dof ≈ 460: allow 4 sigma
    np.testing.assert_allclose(c2 / dof, 1.0, atol=4 * np.sqrt(2 / dof.min()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("mask", "MASK has 3 values other than 0 and 1"),
        ("sigma", "SIGMA <= 0 in 2 observed pixels"),
        ("nan", "G2 is not finite in 1 observed pixels"),
        ("shape", "SIGMA has shape"),
        ("empty", "bins [1] have no observed pixel"),
    ],
)
def test_bad_shear_data_is_refused_with_file_and_count(rng, change, message):
    _, g1, g2, sigma, mask = make_data(rng, mask_fraction=0.0)
    if change == "mask":
        mask[0, 0, :3] = 0.5
    elif change == "sigma":
        sigma[1, 2, 3:5] = 0.0
    elif change == "nan":
        g2[0, 4, 4] = np.inf
    elif change == "shape":
        sigma = sigma[:, :-1]
    elif change == "empty":
        mask[1] = 0
    with pytest.raises(ValueError, match="patch_0007.fits") as err:
        shear_data(g1, g2, sigma, mask, source="patch_0007.fits")
    assert message in str(err.value)


def test_likelihood_scale_is_a_per_bin_sigmoid():
    t_bar = torch.tensor([500.0, 300.0])
    sigma_t = torch.tensor([20.0, 50.0])
    # A(t̄) = 1/2 exactly; A(t̄ ± 3σ) = sigmoid(∓3)
    np.testing.assert_allclose(likelihood_scale(500, t_bar, sigma_t)[0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(likelihood_scale(300, t_bar, sigma_t)[1], 0.5, rtol=1e-6)
    np.testing.assert_allclose(
        likelihood_scale(560, t_bar, sigma_t)[0], 1 / (1 + np.exp(3.0)), rtol=1e-6
    )
    a = likelihood_scale(150, t_bar, sigma_t)
    np.testing.assert_allclose(
        a.numpy(), [1 / (1 + np.exp(-17.5)), 1 / (1 + np.exp(-3))], rtol=1e-6
    )


class ScaledIdentity(torch.nn.Module):
    """x̂0 = c·x_t (a stand-in network for checking gradients through x̂0)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return self.c * x


def _guidance_inputs(rng, n_bins=2):
    kappa, g1, g2, sigma, mask = make_data(rng, n_bins=n_bins)
    data = shear_data(g1, g2, sigma, mask)
    schedule = make_schedule(T=1000)
    x_t = torch.as_tensor(rng.normal(size=(3, n_bins, N, N)), dtype=torch.float32)
    return data, schedule, x_t


def _chi2_half(data, x_t, c, s):
    return 0.5 * chi2(s * c * x_t, data).sum()


@pytest.mark.parametrize(("scaled", "zeta"), [(True, 1.0), (False, 1.0), (True, 3.0)])
def test_beta_step_is_scale_times_beta_times_gradient(rng, scaled, zeta):
    data, schedule, x_t = _guidance_inputs(rng)
    c, s = 0.7, 0.02  # x̂0 = c x_t, κ = s x̂0
    steps = timestep_sequence(1000, 50)
    t, t_next = steps[20], steps[21]
    scaling = LikelihoodScaling((t, t - 40), (20.0,)) if scaled else LikelihoodScaling()
    g = dps_guidance(
        data, lambda x: s * x, schedule.alphas_cumprod, steps, scaling=scaling, zeta=zeta
    )
    x_in = x_t.clone().requires_grad_(True)
    corr = g(x_in, t, ScaledIdentity(c)(x_in))
    # reference: autograd of χ²/2 in float64, and the step written out
    x64 = x_t.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(_chi2_half(data, x64, c, s), x64)
    abar = schedule.alphas_cumprod.double()
    beta = 1 - abar[t] / abar[t_next]
    a = torch.tensor([0.5, 1 / (1 + np.exp(2.0))]) if scaled else torch.ones(2)
    want = (zeta * a.view(1, 2, 1, 1) * beta * grad).float()
    # float32 χ² gradient against float64: 1e-4 relative
    torch.testing.assert_close(corr, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    assert not corr.requires_grad


def test_beta_step_with_every_timestep_is_beta_t(rng):
    data, schedule, x_t = _guidance_inputs(rng, n_bins=1)
    steps = list(range(999, -1, -1))
    g = dps_guidance(
        data, lambda x: 0.02 * x, schedule.alphas_cumprod, steps, scaling=LikelihoodScaling()
    )
    x_in = x_t.clone().requires_grad_(True)
    corr = g(x_in, 400, x_in)
    x_in2 = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_chi2_half(data, x_in2, 1.0, 0.02), x_in2)
    # β_t from the schedule against 1 − ᾱ_t/ᾱ_{t−1} in float64: float32 rounding of β
    torch.testing.assert_close(corr, schedule.betas[400] * grad, rtol=2e-3, atol=0.0)


def test_normalised_step_follows_chung(rng):
    data, schedule, x_t = _guidance_inputs(rng)
    zeta = 0.3
    steps = timestep_sequence(1000, 10)
    g = dps_guidance(
        data, lambda x: 0.02 * x, schedule.alphas_cumprod, steps,
        scaling=LikelihoodScaling(), step="normalised", zeta=zeta,
    )  # fmt: skip
    x_in = x_t.clone().requires_grad_(True)
    corr = g(x_in, steps[3], x_in)
    # ζ/‖r‖ ∇‖r‖² = 2ζ ∇‖r‖, ‖r‖ = sqrt(χ²) per sample
    x64 = x_t.double().requires_grad_(True)
    norm = chi2(0.02 * x64, data).sum(dim=-1).sqrt()
    (grad_norm,) = torch.autograd.grad(norm.sum(), x64)
    torch.testing.assert_close(corr.double(), 2 * zeta * grad_norm, rtol=1e-4, atol=1e-8)


def test_guidance_refuses_unknown_settings(rng):
    data, schedule, _ = _guidance_inputs(rng)
    ac = schedule.alphas_cumprod
    with pytest.raises(ValueError, match="step = 'adam'"):
        dps_guidance(data, lambda x: x, ac, [10, 0], step="adam")
    with pytest.raises(ValueError, match="t_bar has 3 values, expected 1 or 2"):
        dps_guidance(data, lambda x: x, ac, [10, 0], scaling=LikelihoodScaling((1, 2, 3), (20,)))
    with pytest.raises(ValueError, match="sigma_t"):
        dps_guidance(data, lambda x: x, ac, [10, 0], scaling=LikelihoodScaling((500,), (0.0,)))
    g = dps_guidance(data, lambda x: x, ac, [10, 0])
    x = torch.zeros(1, 2, N, N, requires_grad=True)
    with pytest.raises(ValueError, match="t = 5"):
        g(x, 5, x)


class WhitePrior(torch.nn.Module):
    """The exact v-prediction for a white unit-Gaussian x_0: E[v | x_t] = 0."""

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_drift_is_one_for_exact_prior_sampling_and_grows_under_kicks():
    schedule = make_schedule(T=1000)
    steps = timestep_sequence(1000, 100)
    gen = torch.Generator().manual_seed(1)
    diag = TrajectoryDiagnostic(schedule.alphas_cumprod)
    ddim_sample(WhitePrior(), schedule, (8, 2, N, N), steps, 1.0, gen, callback=diag)
    drift = diag.drift()
    assert drift.shape == (100, 8, 2)
    # mean over 8 x 256 pixels: rms scatter ≈ 1/sqrt(2 x 2048) ≈ 1.6 %; allow 5 %
    np.testing.assert_allclose(drift.mean(axis=1), 1.0, atol=0.05)

    def kick(x_t, t, x0_hat):
        # a likelihood-like push that ignores the noise level: drives x_t off the marginals
        return -0.5 * torch.ones_like(x_t) if t > 500 else torch.zeros_like(x_t)

    diag2 = TrajectoryDiagnostic(schedule.alphas_cumprod)
    gen = torch.Generator().manual_seed(1)
    ddim_sample(WhitePrior(), schedule, (8, 2, N, N), steps, 1.0, gen, kick, diag2)
    assert diag2.drift().mean(axis=(1, 2)).max() > 1.5


@pytest.fixture
def gaussian_problem(rng):
    """White Gaussian κ prior, no mask, uniform noise: the exact posterior is known.

    With κ = s x, x ~ N(0, 1) and γ = A κ + n (A an isometry, n white of variance σ²), the
    posterior mean of κ is the Wiener filter s²/(s² + σ²) KS_E(γ) pixel by pixel.
    """
    s, noise, n_bins = 0.02, 0.02, 2
    kappa = s * rng.normal(size=(n_bins, N, N))
    g = np.array([brute_shear(k) for k in kappa])
    sigma = np.full((n_bins, N, N), noise)
    g1 = g[:, 0] + noise * rng.normal(size=sigma.shape)
    g2 = g[:, 1] + noise * rng.normal(size=sigma.shape)
    data = shear_data(g1, g2, sigma, np.ones_like(sigma))
    kernel = _kernel()
    ks = np.real(np.fft.ifft2(np.conj(kernel) * np.fft.fft2(g1 + 1j * g2)))
    return s, data, s**2 / (s**2 + noise**2) * ks


def _dps_summary(problem, n_steps, **kwargs):
    """(correlation and slope of the sample mean against the Wiener mean, mean χ²/dof)."""
    s, data, wiener = problem
    schedule = make_schedule(T=1000)
    steps = timestep_sequence(1000, n_steps)
    guidance = dps_guidance(data, lambda x: s * x, schedule.alphas_cumprod, steps, **kwargs)
    gen = torch.Generator().manual_seed(3)
    x0 = ddim_sample(WhitePrior(), schedule, (32, 2, N, N), steps, 1.0, gen, guidance)
    samples = s * x0.double().numpy()
    # the mean (ℓ = 0) is unconstrained by shear: compare fluctuations only
    mean = samples.mean(axis=0) - samples.mean(axis=(0, 2, 3))[:, None, None]
    r = np.corrcoef(mean.ravel(), wiener.ravel())[0, 1]
    slope = np.sum(mean * wiener) / np.sum(wiener**2)
    c2 = chi2(torch.as_tensor(samples), data).numpy() / data.dof.numpy()
    return r, slope, c2.mean()


def test_dps_on_a_gaussian_prior_approaches_the_wiener_posterior(gaussian_problem):
    r, slope, c2 = _dps_summary(gaussian_problem, 100, scaling=LikelihoodScaling((800.0,), (20.0,)))
    # 32 samples with posterior std 0.71 s: the sample mean scatters by 0.12 s around a
    # posterior mean of std 0.71 s, so an exact sampler gives r ≈ 0.985
    assert r > 0.95
    assert 0.8 < slope < 1.3  # DPS's Tweedie step is approximate: 30 %
    # exact posterior samples have E[χ²/dof] = 1: the E residual has variance
    # σ⁴/(s²+σ²) (data − mean) + s²σ²/(s²+σ²) (posterior scatter) = σ², the B residual σ²
    assert 0.85 < c2 < 1.15


def test_unscaled_dps_overfits_and_the_step_does_not_depend_on_nfe(gaussian_problem):
    _, slope_scaled, c2_scaled = _dps_summary(gaussian_problem, 50, scaling=PAPER_SCALING)
    _, slope_plain, c2_plain = _dps_summary(gaussian_problem, 50, scaling=LikelihoodScaling())
    # A ≡ 1 gives the likelihood its full weight from t = T: a larger pull to the data
    assert slope_plain > slope_scaled + 0.3
    assert c2_plain < c2_scaled - 0.2
    # β_eff = 1 − ᾱ_t/ᾱ_t' keeps the integrated step fixed when steps are skipped:
    # 50 and 250 network evaluations agree to 10 % (the toy gives ≈ 5 %)
    _, slope_fine, c2_fine = _dps_summary(gaussian_problem, 250, scaling=PAPER_SCALING)
    np.testing.assert_allclose(slope_fine, slope_scaled, rtol=0.1)
    np.testing.assert_allclose(c2_fine, c2_scaled, rtol=0.1)


def _kernel() -> np.ndarray:
    f = np.fft.fftfreq(N)
    lx, ly = f[None, :], f[:, None]
    l2 = lx**2 + ly**2
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(l2 > 0, (lx + 1j * ly) ** 2 / l2, 0)
    return d
