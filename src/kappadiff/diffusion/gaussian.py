"""The exact denoiser of a periodic Gaussian field: a reference for samplers and priors.

For maps ``x [..., bins, n, n]`` drawn from a zero-mean Gaussian field that is stationary on
the periodic ``n × n`` grid, every Fourier mode ``k`` is independent with a ``bins × bins``
covariance ``P(k) = E[X(k) X(k)^†]`` (unnormalised FFT). Under ``x_t = a x_0 + s ε`` the
posterior mean is linear, mode by mode (Tweedie's estimate is exact):

    X̂_0(k) = a P(k) [a² P(k) + s² n² I]⁻¹ X_t(k),

so :class:`GaussianDenoiser` is the ideal network ``model(x_t, t) -> v`` for such a field.
Driving a sampler with it isolates the sampler's own error: a perfect sampler returns maps
with power ``P``, whatever the quality of any trained prior. Large-scale lensing modes are
close to Gaussian, so this is also the limit a trained prior should reach on the largest
scales of a patch.
"""

from __future__ import annotations

import numpy as np
import torch

from .process import Schedule

__all__ = ["GaussianDenoiser", "draw_gaussian", "mode_covariance"]


def mode_covariance(maps: np.ndarray) -> np.ndarray:
    """``P(k)``, complex ``[n, n, bins, bins]``: the mean of ``X(k) X(k)^†`` over ``maps``.

    Parameters
    ----------
    maps
        ``[N, bins, n, n]`` (normalised) maps; the estimate averages over the ``N`` maps.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] < 1:
        raise ValueError(f"maps must be [N, bins, n, n] with N >= 1, got shape {maps.shape}")
    f = np.fft.fft2(maps)
    return np.einsum("nakl,nbkl->klab", f, f.conj()) / maps.shape[0]


def draw_gaussian(cov: np.ndarray, n_maps: int, rng: np.random.Generator) -> np.ndarray:
    """``n_maps`` exact draws ``[n_maps, bins, n, n]`` of the periodic field with ``cov``.

    White noise ``W`` (unit variance per pixel, so ``E[W W^†] = n² I`` per mode) is coloured
    mode by mode by ``L(k) / n`` with ``L L^† = P`` (eigen-decomposition; ``P`` is Hermitian
    and ``P(−k) = P(k)*`` for a real field, so the maps are real).
    """
    n = cov.shape[0]
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]
    white = np.fft.fft2(rng.standard_normal((n_maps, cov.shape[-1], n, n)))
    return np.fft.ifft2(np.einsum("klab,nbkl->nakl", root, white) / n).real


class GaussianDenoiser(torch.nn.Module):
    """``model(x_t, t) -> v`` of the exact posterior mean of a periodic Gaussian field.

    Parameters
    ----------
    cov
        ``P(k)`` from :func:`mode_covariance`, in the units the sampler works in.
    schedule
        The noise schedule (``ᾱ_t``); ``v = (a x_t − x̂_0)/s`` as in
        :func:`kappadiff.diffusion.process.x0_eps_from_v`.
    """

    def __init__(self, cov: np.ndarray, schedule: Schedule) -> None:
        super().__init__()
        cov = np.ascontiguousarray(cov, dtype=np.complex128)
        self.register_buffer("cov", torch.from_numpy(cov))
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.double().cpu())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        ac = self.alphas_cumprod[t.to(self.alphas_cumprod.device)]
        out = torch.empty_like(x)
        for value in torch.unique(t):
            sel = t == value
            a2 = ac[sel][0]
            a, s = a2.sqrt(), (1 - a2).sqrt()
            eye = torch.eye(self.cov.shape[-1], dtype=self.cov.dtype, device=self.cov.device)
            gain = a * self.cov @ torch.linalg.inv(a2 * self.cov + (s * n) ** 2 * eye)
            z = torch.fft.fft2(x[sel].to(torch.float64)).to(gain.dtype)
            x0 = torch.fft.ifft2(torch.einsum("klab,nbkl->nakl", gain, z)).real
            out[sel] = ((a * x[sel].to(torch.float64) - x0) / s).to(x.dtype)
        return out
