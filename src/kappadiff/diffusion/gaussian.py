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

With shear data the posterior of such a field is Gaussian too, and
:class:`GaussianPosterior` gives its exact mean and exact draws, the reference against
which a posterior sampler driven by :class:`GaussianDenoiser` is checked.
"""

from __future__ import annotations

import numpy as np
import torch

from .dps import ShearData
from .process import Schedule
from .split_gibbs import ExactDataStep, conjugate_gradients

__all__ = ["GaussianDenoiser", "GaussianPosterior", "draw_gaussian", "mode_covariance"]


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


class GaussianPosterior:
    """Exact posterior of the periodic Gaussian field of ``cov`` given a patch's shear.

    The prior is ``x ~ N(0, P)`` with ``P`` diagonal in Fourier space (``cov``, as for
    :class:`GaussianDenoiser`), κ is affine in ``x`` per bin (``κ = scale_b x + offset_b``)
    and the shear ``γ = A κ + n`` with the padded flat-sky operator and per-pixel noise, as
    in the samplers' likelihood. The posterior is Gaussian with precision
    ``P⁻¹ + Sᵀ Aᵀ W A S`` (``S = diag(scale)``); it is solved for in the whitened variable
    ``v`` with ``x = P^{1/2} v``, by conjugate gradients on
    ``(I + P^{1/2} S Aᵀ W A S P^{1/2}) v = b``.

    Parameters
    ----------
    cov
        ``P(k)`` ``[n, n, bins, bins]`` in the network's units (:func:`mode_covariance`).
    data
        The patch's shear.
    scale, offset
        The prior normalisation, ``[bin]``.
    pad
        Zero padding of the κ → γ operator, pixels per side.
    tol, max_iter
        CG stopping rule (relative residual) and iteration cap.
    """

    def __init__(
        self,
        cov: np.ndarray,
        data: ShearData,
        scale: torch.Tensor,
        offset: torch.Tensor,
        pad: int = 0,
        tol: float = 1e-8,
        max_iter: int = 2000,
    ) -> None:
        cov = np.asarray(cov, dtype=np.complex128)
        n = cov.shape[0]
        w, v = np.linalg.eigh(cov)
        # symmetric root of P(k)/n², so that x = ifft(root fft(v)) has covariance P for white v
        root = (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.conj(np.swapaxes(v, -1, -2))
        self.root = torch.from_numpy(root / n)
        self.op = ExactDataStep(data, scale, offset, pad)
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.iterations = 0

    def sqrt_prior(self, v: torch.Tensor) -> torch.Tensor:
        """``P^{1/2} v`` for real ``v [..., bin, n, n]`` (float64)."""
        f = torch.fft.fft2(v.to(torch.float64)).to(self.root.dtype)
        return torch.fft.ifft2(torch.einsum("klab,...bkl->...akl", self.root, f)).real

    def _likelihood_term(self, x: torch.Tensor) -> torch.Tensor:
        """``S Aᵀ W A S x`` for ``x`` in network units."""
        op = self.op
        return op.scale * op.adjoint(op.weight * op.forward(op.scale * x))

    def _solve(self, b: torch.Tensor) -> torch.Tensor:
        def hessian(v: torch.Tensor) -> torch.Tensor:
            return v + self.sqrt_prior(self._likelihood_term(self.sqrt_prior(v)))

        v, self.iterations = conjugate_gradients(
            hessian, b, 1.0, (-3, -2, -1), self.tol, self.max_iter, "exact Gaussian posterior"
        )
        return self.sqrt_prior(v)

    def _rhs(self, gamma: torch.Tensor) -> torch.Tensor:
        op = self.op
        shear_of_offset = op.forward(op.offset.expand(op.gamma.shape))
        return self.sqrt_prior(op.scale * op.adjoint(op.weight * (gamma - shear_of_offset)))

    def mean(self) -> torch.Tensor:
        """The posterior mean of ``x``, float64 ``[bin, n, n]``."""
        return self._solve(self._rhs(self.op.gamma))

    def draws(self, n_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``n_draws`` exact posterior draws of ``x`` by perturb-and-solve, float64.

        With ``ξ₁, ξ₂`` standard normal, the solution of ``H v = b + ξ₁ +
        P^{1/2} S Aᵀ W^{1/2} ξ₂`` has the posterior's mean and covariance ``H⁻¹``.
        """
        op = self.op
        shape = (n_draws, *op.gamma.shape)
        xi1 = torch.randn(shape, generator=generator, dtype=torch.float64)
        xi2 = torch.randn((2, *shape), generator=generator, dtype=torch.float64)
        root_w = op.weight.sqrt()
        perturbed = op.gamma + torch.where(
            root_w > 0, 1.0 / root_w.clamp_min(1e-300), 0.0
        ) * torch.complex(xi2[0], xi2[1])
        # W (γ + W^{-1/2} ξ₂) = W γ + W^{1/2} ξ₂: the data term's perturbation
        return self._solve(self._rhs(perturbed) + xi1)
