"""The diffusion process: discrete variance-preserving (DDPM) noising, v-parameterisation, loss.

Forward process (Ho et al. 2020, eq. 4): ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε``,
``t = 0 … T−1`` with ``ᾱ_t = Π_{s≤t} (1 − β_s)``. The network predicts the velocity
``v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0`` (Salimans & Ho 2022, section 4), from which
``x_0 = sqrt(ᾱ_t) x_t − sqrt(1 − ᾱ_t) v`` and ``ε = sqrt(1 − ᾱ_t) x_t + sqrt(ᾱ_t) v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Schedule",
    "broadcast",
    "loss",
    "loss_weight",
    "make_schedule",
    "q_sample",
    "v_target",
    "x0_eps_from_v",
]


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule.

    Attributes
    ----------
    T
        Number of diffusion steps.
    betas
        ``β_t``, float32 ``[T]``.
    alphas_cumprod
        ``ᾱ_t``, float32 ``[T]``, decreasing from ≈1 to ≈0.
    name, params
        How it was made (:func:`make_schedule` arguments), stored in checkpoints.
    """

    T: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    name: str
    params: dict

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``ᾱ_t / (1 − ᾱ_t)``, ``[T]``."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule with its tensors on ``device``."""
        return Schedule(
            self.T,
            self.betas.to(device),
            self.alphas_cumprod.to(device),
            self.name,
            dict(self.params),
        )

    def to_dict(self) -> dict:
        """Plain values that :func:`make_schedule` rebuilds the schedule from."""
        return {"name": self.name, "T": self.T, **self.params}


def _sigmoid_alphas_cumprod(T: int, start: float, end: float, tau: float) -> torch.Tensor:
    # Jabri et al. 2022 (arXiv:2212.11972), eq. 6, as in denoising-diffusion-pytorch:
    # ᾱ(u) ∝ sigmoid(end/τ) − sigmoid(((end − start) u + start)/τ), u ∈ [0, 1], ᾱ(0) = 1
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    ac = (v_end - torch.sigmoid(((end - start) * u + start) / tau)) / (v_end - v_start)
    return ac / ac[0]


def _cosine_alphas_cumprod(T: int, s: float) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: ᾱ(u) = cos²((u + s)/(1 + s) · π/2) / ᾱ(0)
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def make_schedule(
    name: str = "sigmoid",
    T: int = 1000,
    start: float = -5.0,
    end: float = 3.0,
    tau: float = 1.0,
    cosine_s: float = 0.008,
) -> Schedule:
    """Build the β / ᾱ schedule.

    Parameters
    ----------
    name
        ``"sigmoid"`` (the reference: Jabri et al. 2022 with ``start=-5, end=3, tau=1``)
        or ``"cosine"`` (Nichol & Dhariwal 2021, offset ``cosine_s``).
    T
        Number of discrete steps.
    start, end, tau
        Sigmoid-schedule parameters (ignored for cosine).
    cosine_s
        Cosine-schedule offset (ignored for sigmoid).

    Notes
    -----
    Both define a continuous ``ᾱ(u)`` sampled at ``u = k/T``; ``β_k = 1 − ᾱ(k+1/T)/ᾱ(k/T)``
    is clipped to ``[0, 0.999]`` (Nichol & Dhariwal 2021, section 3.2) and ``ᾱ_t`` recomputed
    as the cumulative product, so ``ᾱ_t`` at index ``t`` is the signal level after ``t + 1``
    noising steps.
    """
    if name == "sigmoid":
        ac = _sigmoid_alphas_cumprod(T, start, end, tau)
        params = {"start": float(start), "end": float(end), "tau": float(tau)}
    elif name == "cosine":
        ac = _cosine_alphas_cumprod(T, cosine_s)
        params = {"cosine_s": float(cosine_s)}
    else:
        raise ValueError(f"unknown noise schedule {name!r} (expected 'sigmoid' or 'cosine')")
    betas = (1 - ac[1:] / ac[:-1]).clamp(0.0, 0.999)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return Schedule(int(T), betas.float(), alphas_cumprod.float(), name, params)


def broadcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` reshaped to ``[B, 1, 1, …]`` to broadcast against ``like``."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(
    schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Noised sample ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε`` (Ho et al. 2020, eq. 4)."""
    ac = broadcast(schedule.alphas_cumprod, t, x0)
    return ac.sqrt() * x0 + (1 - ac).sqrt() * noise


def v_target(
    schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Velocity ``v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0`` (Salimans & Ho 2022, eq. 10 ff.)."""
    ac = broadcast(schedule.alphas_cumprod, t, x0)
    return ac.sqrt() * noise - (1 - ac).sqrt() * x0


def x0_eps_from_v(
    schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from a predicted velocity; ``x̂_0`` is the Tweedie (posterior-mean) estimate.

    ``x̂_0 = sqrt(ᾱ_t) x_t − sqrt(1 − ᾱ_t) v``, ``ε̂ = sqrt(1 − ᾱ_t) x_t + sqrt(ᾱ_t) v``.
    Differentiable in ``x_t`` and ``v``.
    """
    ac = broadcast(schedule.alphas_cumprod, t, x_t)
    a, s = ac.sqrt(), (1 - ac).sqrt()
    return a * x_t - s * v, s * x_t + a * v


def loss_weight(schedule: Schedule, t: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
    """Per-sample weight of the v-MSE, ``min(SNR_t, γ) / (SNR_t + 1)``, shape ``[B]``.

    With ``γ → ∞`` this is ``SNR/(SNR+1)``, which makes the v-loss equal to the ε-loss of
    Ho et al. (2020); a finite ``γ`` is the Min-SNR-γ weighting (Hang et al. 2023, eq. 11 for
    v-prediction), which caps the weight of the nearly noise-free steps.
    """
    snr = schedule.snr.to(t.device)[t]
    return snr.clamp(max=min_snr_gamma) / (snr + 1)


def loss(
    model: torch.nn.Module,
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    min_snr_gamma: float = 5.0,
) -> torch.Tensor:
    """Weighted v-prediction loss, mean over the batch.

    Parameters
    ----------
    model
        Network called as ``model(x_t, t) -> v``.
    x0
        Normalised clean cut-outs ``[B, bins, n, n]``.
    t
        Timesteps, int64 ``[B]``.
    noise
        ``ε ~ N(0, 1)`` shaped like ``x0``.
    min_snr_gamma
        See :func:`loss_weight`.

    Returns
    -------
    Scalar ``mean_b w(t_b) · mean_pixels (v̂ − v)²``, computed in float32.
    """
    x_t = q_sample(schedule, x0, t, noise)
    v_pred = model(x_t, t).float()
    mse = (v_pred - v_target(schedule, x0, t, noise)).pow(2).flatten(1).mean(1)
    return (loss_weight(schedule, t, min_snr_gamma) * mse).mean()
