"""The VP diffusion process: schedules, v-parameterisation, loss weighting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kappadiff.diffusion.process import (
    loss,
    loss_weight,
    make_schedule,
    q_sample,
    v_target,
    x0_eps_from_v,
)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_sigmoid_schedule_matches_reference():
    # brute-force reference, written independently from Jabri et al. 2022 eq. 6
    T, start, end, tau = 1000, -5.0, 3.0, 1.0
    sched = make_schedule("sigmoid", T, start, end, tau)
    u = np.arange(T + 1) / T
    ac = (_sigmoid(end / tau) - _sigmoid((u * (end - start) + start) / tau)) / (
        _sigmoid(end / tau) - _sigmoid(start / tau)
    )
    betas = np.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    ref = np.cumprod(1 - betas)
    # float32 storage of values in [0, 1]: 1e-6 absolute
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(sched.betas.numpy(), betas, atol=1e-6)


def test_cosine_schedule_matches_reference():
    T, s = 1000, 0.008
    sched = make_schedule("cosine", T)
    t = np.arange(1, T + 1) / T
    ref = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / np.cos(s / (1 + s) * math.pi / 2) ** 2
    # clipping of β at 0.999 only affects the last step
    np.testing.assert_allclose(sched.alphas_cumprod.numpy()[:-1], ref[:-1], atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "cosine"])
def test_schedule_monotone_and_spans_noise(name):
    ac = make_schedule(name).alphas_cumprod
    assert ac.dtype == torch.float32
    assert torch.all(ac[1:] < ac[:-1])
    assert ac[0] > 0.999 and ac[-1] < 1e-4  # almost clean at t=0, pure noise at t=T-1


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown noise schedule 'linear'"):
        make_schedule("linear")


def test_v_parameterisation_round_trip(rng):
    sched = make_schedule()
    x0 = torch.from_numpy(rng.standard_normal((5, 4, 8, 8)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((5, 4, 8, 8)).astype(np.float32))
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = q_sample(sched, x0, t, noise)
    x0_rec, eps_rec = x0_eps_from_v(sched, x_t, t, v_target(sched, x0, t, noise))
    # exact identities up to float32 rounding of O(1) values
    torch.testing.assert_close(x0_rec, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_rec, noise, rtol=0, atol=1e-5)


def test_variance_preserving(rng):
    # unit-variance x0 and noise give unit-variance x_t at every t (VP); 40,000 values: the
    # standard error of a variance is ~0.007, so 0.03 is a > 4σ bound
    sched = make_schedule()
    x0 = torch.from_numpy(rng.standard_normal((100, 4, 10, 10)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((100, 4, 10, 10)).astype(np.float32))
    for t in (0, 300, 700, 999):
        x_t = q_sample(sched, x0, torch.full((100,), t), noise)
        assert abs(float(x_t.var()) - 1) < 0.03


def test_loss_weight_unclipped_equals_eps_loss(rng):
    # with γ → ∞, w = SNR/(SNR+1) makes the weighted v-loss equal to the ε-MSE of the
    # ε implied by the predicted v (Salimans & Ho 2022)
    sched = make_schedule()
    x0 = torch.from_numpy(rng.standard_normal((6, 4, 8, 8)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((6, 4, 8, 8)).astype(np.float32))
    t = torch.tensor([50, 200, 400, 600, 800, 950])
    const = torch.nn.Parameter(torch.tensor(0.3))

    def model(x_t, t):
        return const * x_t

    value = loss(model, sched, x0, t, noise, min_snr_gamma=1e30)
    x_t = q_sample(sched, x0, t, noise)
    _, eps_hat = x0_eps_from_v(sched, x_t, t, model(x_t, t))
    eps_mse = (eps_hat - noise).pow(2).flatten(1).mean(1).mean()
    torch.testing.assert_close(value, eps_mse, rtol=1e-4, atol=0)  # float32 sums


def test_min_snr_weight_caps():
    sched = make_schedule()
    t = torch.arange(sched.T)
    w = loss_weight(sched, t, 5.0)
    snr = sched.snr
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert w.max() <= 5.0 / 6.0 + 1e-6  # the cap binds where SNR ≥ 5
