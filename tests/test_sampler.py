"""The DDIM loop: exactness against an analytic denoiser, guidance hook, callback."""

from __future__ import annotations

import pytest
import torch

from kappadiff.diffusion.process import Schedule, broadcast, make_schedule
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence


class WhiteNoiseDenoiser(torch.nn.Module):
    """The exact v-predictor for white data x0 ~ N(0, s²) per pixel, independent of
    :class:`kappadiff.diffusion.gaussian.GaussianDenoiser` (a check of the sampler alone).

    E[x0 | x_t] = sqrt(ᾱ) s² x_t / (ᾱ s² + 1 − ᾱ), and v = (sqrt(ᾱ) x_t − x̂0)/sqrt(1 − ᾱ).
    """

    def __init__(self, schedule: Schedule, s: float) -> None:
        super().__init__()
        self.schedule, self.s = schedule, s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac = broadcast(self.schedule.alphas_cumprod, t, x_t)
        x0 = ac.sqrt() * self.s**2 * x_t / (ac * self.s**2 + 1 - ac)
        return (ac.sqrt() * x_t - x0) / (1 - ac).sqrt()


def test_timestep_sequence():
    seq = timestep_sequence(1000, 50)
    assert seq[0] == 999 and seq[-1] == 0 and len(seq) == 50


def test_timestep_sequence_power_spacing():
    # power 1 is DDIM's even spacing, bit for bit
    assert timestep_sequence(1000, 50, 1.0) == timestep_sequence(1000, 50)
    for n in (2, 7, 50, 333, 1000):
        seq = timestep_sequence(1000, n, 3.0)
        assert len(seq) == n and seq[0] == 999 and seq[-1] == 0
        assert all(b < a for a, b in zip(seq, seq[1:], strict=False))
    seq = timestep_sequence(1000, 50, 3.0)
    gaps = [a - b for a, b in zip(seq, seq[1:], strict=False)]
    # dense at the top (where log SNR falls fastest), coarse at the bottom: t = 999(1 − u³)
    assert gaps[:3] == [1, 1, 1] and gaps[-1] > 40
    # t ≥ 975 (log SNR < −4.6, where the patch's largest modes form): 11 steps, 2 when even
    assert sum(t >= 975 for t in seq) == 11
    assert sum(t >= 975 for t in timestep_sequence(1000, 50)) == 2
    assert all(g2 >= g1 - 1 for g1, g2 in zip(gaps, gaps[1:], strict=False))
    with pytest.raises(ValueError, match="power"):
        timestep_sequence(1000, 50, 0.5)
    assert all(a > b for a, b in zip(seq, seq[1:], strict=False))
    with pytest.raises(ValueError, match="DDIM steps = 0"):
        timestep_sequence(1000, 0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_gaussian_variance(eta):
    # with the exact denoiser, DDIM (η = 0: probability-flow ODE; η = 1: DDPM-like) must
    # return samples of variance s²; 4 × 4 × 32 × 32 = 16,384 values give a standard error of
    # ~1% on the variance, and 200 steps a discretisation bias of ~2% (η = 1; measured to
    # shrink to < 1% at 1000 steps): 5% tolerance
    sched = make_schedule()
    s = 0.5
    gen = torch.Generator().manual_seed(0)
    x = ddim_sample(
        WhiteNoiseDenoiser(sched, s), sched, (4, 4, 32, 32), timestep_sequence(1000, 200), eta, gen
    )
    assert abs(float(x.var()) / s**2 - 1) < 0.05
    assert abs(float(x.mean())) < 0.02  # standard error 0.5/128 = 0.004


def test_ddim_eta0_is_deterministic_given_noise():
    sched = make_schedule()
    model = WhiteNoiseDenoiser(sched, 0.7)
    steps = timestep_sequence(1000, 10)
    a = ddim_sample(model, sched, (2, 4, 8, 8), steps, 0.0, torch.Generator().manual_seed(3))
    b = ddim_sample(model, sched, (2, 4, 8, 8), steps, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_zero_guidance_changes_nothing_and_sees_differentiable_x0():
    sched = make_schedule()
    model = WhiteNoiseDenoiser(sched, 0.5)
    steps = timestep_sequence(1000, 8)
    seen = []

    def guidance(x_t, t, x0_hat):
        assert x_t.requires_grad and x0_hat.requires_grad
        (grad,) = torch.autograd.grad(x0_hat.sum(), x_t)
        # dx̂0/dx_t of the analytic denoiser is the scalar sqrt(ᾱ) s² / (ᾱ s² + 1 − ᾱ)
        ac = float(sched.alphas_cumprod[t])
        expected = ac**0.5 * 0.25 / (ac * 0.25 + 1 - ac)
        torch.testing.assert_close(grad, torch.full_like(grad, expected), rtol=1e-4, atol=1e-7)
        seen.append(t)
        return torch.zeros_like(x_t)

    plain = ddim_sample(model, sched, (2, 4, 8, 8), steps, 0.5, torch.Generator().manual_seed(1))
    guided = ddim_sample(
        model, sched, (2, 4, 8, 8), steps, 0.5, torch.Generator().manual_seed(1), guidance
    )
    assert seen == steps
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)  # same arithmetic


def test_guidance_is_subtracted():
    # a correction that pulls x̂0 toward a target moves the samples toward it
    sched = make_schedule()
    model = WhiteNoiseDenoiser(sched, 1.0)
    steps = timestep_sequence(1000, 20)
    target = torch.full((8, 4, 8, 8), 2.0)

    def guidance(x_t, t, x0_hat):
        (grad,) = torch.autograd.grad((x0_hat - target).pow(2).sum(), x_t)
        return 0.5 * grad

    plain = ddim_sample(model, sched, target.shape, steps, 0.0, torch.Generator().manual_seed(2))
    guided = ddim_sample(
        model, sched, target.shape, steps, 0.0, torch.Generator().manual_seed(2), guidance
    )
    # unguided mean ≈ 0 (± 0.05 for 2048 unit-variance values); guided clearly toward 2
    assert abs(float(plain.mean())) < 0.1
    assert float(guided.mean()) > 1.0
    assert (guided - target).pow(2).mean() < (plain - target).pow(2).mean()


def test_callback_sees_every_step():
    sched = make_schedule()
    calls = []
    ddim_sample(
        WhiteNoiseDenoiser(sched, 1.0),
        sched,
        (1, 4, 4, 4),
        [900, 400, 0],
        0.0,
        torch.Generator().manual_seed(0),
        callback=lambda i, t, x, x0: calls.append((i, t, x.shape, x0.shape)),
    )
    assert [(i, t) for i, t, *_ in calls] == [(0, 900), (1, 400), (2, 0)]


def test_non_decreasing_steps_raise():
    sched = make_schedule()
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim_sample(
            WhiteNoiseDenoiser(sched, 1.0),
            sched,
            (1, 4, 4, 4),
            [0, 500],
            0.0,
            torch.Generator().manual_seed(0),
        )
