"""The reverse-diffusion loop (DDIM), shared by unconditional sampling and DPS.

Guidance (the Diffusion Posterior Sampling likelihood step, scaled or not) is a function
the loop calls, so every solver variant shares this one loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .process import Schedule, x0_eps_from_v

__all__ = ["Guidance", "ddim_sample", "timestep_sequence"]

#: ``guidance(x_t, t, x0_hat) -> correction``: ``x_t`` requires grad and ``x0_hat`` depends
#: on it through the network; the correction (shaped like ``x_t``) is subtracted from the
#: DDIM update. The loop passes ``t`` as an int; a guidance also takes a batch's timesteps
#: as a tensor (one value for the whole batch).
Guidance = Callable[[torch.Tensor, torch.Tensor | int, torch.Tensor], torch.Tensor]


def timestep_sequence(T: int, n_steps: int, power: float = 1.0) -> list[int]:
    """``n_steps`` decreasing timesteps from ``T − 1`` to 0 (DDIM's τ).

    Parameters
    ----------
    T
        Number of training timesteps.
    n_steps
        Number of network evaluations, ``1 ≤ n_steps ≤ T``.
    power
        Spacing: ``t_i = (T − 1)(1 − u_i^power)`` for ``u`` evenly spaced on [0, 1], rounded.
        ``1`` is DDIM's even spacing; larger values put more steps at the top of the
        schedule, where the patch's largest modes take shape (with the sigmoid schedule,
        log SNR falls from −4.9 at t = 980 to −14.8 at t = 999, which even spacing crosses
        in one step; ``benchmarks/bench_sampler_gaussian.py``). Where rounding merges
        timesteps, ``u`` is refined until there are ``n_steps`` distinct ones.
    """
    if not 1 <= n_steps <= T:
        raise ValueError(f"DDIM steps = {n_steps} must lie in [1, T = {T}]")
    if not power >= 1:
        raise ValueError(f"timestep spacing power = {power} must be >= 1")
    if power == 1:
        seq = torch.linspace(T - 1, 0, n_steps).round().long().tolist()
        return sorted(set(seq), reverse=True)
    n = n_steps
    while True:
        u = torch.linspace(0, 1, n, dtype=torch.float64)
        seq = sorted(set(((T - 1) * (1 - u**power)).round().long().tolist()), reverse=True)
        if len(seq) >= n_steps:
            break
        n += 1
    if len(seq) > n_steps:  # one refinement too many: keep the ends, drop the closest pairs
        seq = _thin(seq, n_steps)
    return seq


def _thin(seq: list[int], n_steps: int) -> list[int]:
    """Drop interior timesteps of ``seq`` (decreasing) with the smallest gap until ``n_steps``."""
    seq = list(seq)
    while len(seq) > n_steps:
        gaps = [seq[i - 1] - seq[i + 1] for i in range(1, len(seq) - 1)]
        del seq[1 + gaps.index(min(gaps))]
    return seq


def ddim_sample(
    model: torch.nn.Module,
    schedule: Schedule,
    shape: Sequence[int],
    steps: Sequence[int],
    eta: float,
    generator: torch.Generator,
    guidance: Guidance | None = None,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw samples with DDIM (Song et al. 2021), optionally guided.

    Parameters
    ----------
    model
        ``model(x_t, t) -> v`` (v-prediction), in eval mode.
    schedule
        The training noise schedule.
    shape
        ``[B, bins, n, n]`` of the samples.
    steps
        Decreasing timesteps to visit (see :func:`timestep_sequence`); NFE = ``len(steps)``.
    eta
        DDIM stochasticity: 0 is the deterministic ODE sampler, 1 matches DDPM's variance.
    generator
        Source of the initial noise and of the η > 0 noise; its device is the sampling
        device.
    guidance
        Optional ``guidance(x_t, t, x0_hat) -> correction``. When given, ``x̂_0`` is computed
        with autograd enabled with respect to ``x_t``, and the correction is subtracted from
        the DDIM update (DPS, Chung et al. 2023, algorithm 1).
    callback
        Optional ``callback(i, t, x_t, x0_hat)``, called at every step (detached tensors).

    Returns
    -------
    Samples ``x_0``, ``shape``, in the network's (normalised) units.

    Notes
    -----
    Song et al. 2021, eq. 12: with ``t' `` the next timestep (``ᾱ_{−1} = 1``),
    ``x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 − ᾱ_{t'} − σ²) ε̂ + σ z``,
    ``σ = η sqrt((1 − ᾱ_{t'})/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_{t'})`` (eq. 16).
    """
    steps = [int(s) for s in steps]
    if any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("DDIM steps must be strictly decreasing")
    if steps[-1] < 0 or steps[0] >= schedule.T:
        raise ValueError(f"DDIM steps must lie in [0, {schedule.T - 1}]")
    device = generator.device
    alphas = schedule.alphas_cumprod.double().tolist()
    x = torch.randn(tuple(shape), generator=generator, device=device)
    for i, t in enumerate(steps):
        a_t = alphas[t]
        a_next = alphas[steps[i + 1]] if i + 1 < len(steps) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        if guidance is not None:
            x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, eps = x0_eps_from_v(schedule, x_in, t_batch, model(x_in, t_batch).float())
                correction = guidance(x_in, t, x0)
        else:
            with torch.no_grad():
                x0, eps = x0_eps_from_v(schedule, x, t_batch, model(x, t_batch).float())
            correction = None
        if callback is not None:
            callback(i, t, x.detach(), x0.detach())
        sigma = eta * math.sqrt(max((1 - a_next) / (1 - a_t) * (1 - a_t / a_next), 0.0))
        x_next = math.sqrt(a_next) * x0.detach() + (
            math.sqrt(max(1 - a_next - sigma**2, 0.0)) * eps.detach()
        )
        if sigma > 0:
            x_next = x_next + sigma * torch.randn(
                x.shape, generator=generator, device=device, dtype=x.dtype
            )
        if correction is not None:
            x_next = x_next - correction.detach()
        x = x_next
    return x
