"""The exact Gaussian-field denoiser: draws, posterior mean, and what DDIM does with it."""

from __future__ import annotations

import numpy as np
import torch

from kappadiff.diffusion.gaussian import GaussianDenoiser, draw_gaussian, mode_covariance
from kappadiff.diffusion.process import make_schedule
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence

N = 16


def _red_cov(bins: int = 2, r: float = 0.8) -> np.ndarray:
    """P(k) [N, N, bins, bins]: ∝ 1/|k|, 45 times white noise's at the fundamental (as the
    normalised κ cut-outs of the default config), bins correlated by r."""
    k = np.fft.fftfreq(N) * N
    kk = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    p = N * N * 45.0 / np.maximum(kk, 0.5)
    mix = np.full((bins, bins), r) + (1 - r) * np.eye(bins)
    return p[..., None, None] * mix


def test_draws_have_the_covariance():
    cov = _red_cov()
    draws = draw_gaussian(cov, 2000, np.random.default_rng(0))
    assert draws.shape == (2000, 2, N, N) and np.isrealobj(draws)
    est = mode_covariance(draws)
    rel = est[..., 0, 0].real / cov[..., 0, 0] - 1
    # |X(k)|² is exponential (χ²₁ for the 4 self-conjugate modes): 2.2 % (3.2 %) per mode for
    # 2000 maps, so 15 % is > 4.5 σ for the worst of 256 modes; a missing 1/n or a
    # square root left off the eigenvalues is off by a factor ≥ 4
    assert np.max(np.abs(rel)) < 0.15
    rho = est[..., 0, 1].real / np.sqrt(est[..., 0, 0].real * est[..., 1, 1].real)
    assert abs(rho.mean() - 0.8) < 0.02


def test_denoiser_is_the_analytic_posterior_mean():
    # white field of variance p per pixel: P = p n² per mode, x̂0 = a p z / (a² p + s²)
    sched = make_schedule()
    p = 3.0
    cov = np.full((N, N, 1, 1), p * N * N, dtype=np.complex128)
    model = GaussianDenoiser(cov, sched)
    z = torch.randn(4, 1, N, N, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 300, 700, 999])
    v = model(z, t)
    ac = sched.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    a, s = ac.sqrt(), (1 - ac).sqrt()
    x0 = a * p * z.double() / (ac * p + s**2)
    torch.testing.assert_close(v.double(), (a * z.double() - x0) / s, rtol=1e-5, atol=1e-6)


def test_ddim_needs_steps_at_the_top_for_large_scale_power():
    # modes with 45 times white noise's variance form at log SNR ≈ −4, which 50 evenly
    # spaced DDIM steps over the default sigmoid schedule cross in one or two steps
    sched = make_schedule()
    cov = _red_cov(bins=1)
    model = GaussianDenoiser(cov, sched)
    k = np.fft.fftfreq(N) * N
    low = np.hypot(*np.meshgrid(k, k, indexing="ij")) == 1  # the 4 fundamental modes

    def low_power(n_steps: int, power: float = 1.0) -> float:
        x = ddim_sample(
            model,
            sched,
            (256, 1, N, N),
            timestep_sequence(1000, n_steps, power),
            0.0,
            torch.Generator().manual_seed(1),
        )
        f = np.fft.fft2(x.double().numpy()[:, 0])
        return float((np.abs(f) ** 2)[:, low].mean() / cov[low, 0, 0].real.mean())

    # 1024 exponential values: 3 % standard error. Over seeds, 1000 steps give 0.90–1.00,
    # 50 evenly spaced 0.60–0.70 and 50 spaced t = 999(1 − u³) 0.86–0.96
    assert abs(low_power(1000) - 1) < 0.12
    assert low_power(50) < 0.8
    assert low_power(50, 3.0) > 0.82
