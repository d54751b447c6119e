"""Flat-sky weak lensing on a patch: κ → γ, Kaiser-Squires, Wiener filter, smoothing.

Conventions (docs/architecture.md): arrays are ``[..., row, col]`` with x = col and
y = row, ℓx is the Fourier frequency along col and ℓy along row. The shear in DES
convention obeys (Kaiser & Squires 1993, eq. 2.1.14 in Bartelmann & Schneider 2001)

    γ̂1 = (ℓx² − ℓy²)/ℓ² κ̂,    γ̂2 = 2 ℓx ℓy/ℓ² κ̂,

i.e. γ̂ = D κ̂ for the complex shear γ = γ1 + iγ2 and the kernel D = (ℓx + iℓy)²/ℓ².
The kernel is defined once, in :func:`shear_kernel`, and used by the numpy and torch
paths alike. It is zero at ℓ = 0, so the mean of κ never leaks into γ1 (the mass-sheet
degeneracy: the mean is unconstrained by shear), and |D| = 1 everywhere else.

The forward operator A: κ ↦ (Re, Im) ifft(D fft κ) is an isometry on zero-mean maps
(Parseval with |D| = 1), and its adjoint is the Kaiser-Squires E mode,
Aᵀ(γ1, γ2) = Re ifft(D* fft(γ1 + iγ2)). On even-sized grids the Nyquist frequency takes
numpy's sign (−n/2); keeping D complex there, instead of symmetrising it, keeps A an
exact isometry, so KS ∘ A is the identity on zero-mean maps to rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
import torch

__all__ = [
    "WienerResult",
    "fourier_ell",
    "gaussian_smooth",
    "kaiser_squires",
    "kaiser_squires_patch",
    "kaiser_squires_torch",
    "kappa_to_shear",
    "kappa_to_shear_torch",
    "shear_kernel",
    "signal_covariance_grid",
    "signal_power_grid",
    "wiener_filter",
    "wiener_filter_tomographic",
]

ARCMIN = np.pi / (180.0 * 60.0)  # radians per arcmin


@functools.lru_cache(maxsize=32)
def _kernel_cached(ny: int, nx: int) -> np.ndarray:
    ly = np.fft.fftfreq(ny)[:, None]
    lx = np.fft.fftfreq(nx)[None, :]
    l2 = lx**2 + ly**2
    num = (lx + 1j * ly) ** 2
    kernel = np.zeros((ny, nx), dtype=np.complex128)
    np.divide(num, l2, out=kernel, where=l2 > 0)
    kernel.setflags(write=False)
    return kernel


def shear_kernel(ny: int, nx: int) -> np.ndarray:
    """The Fourier kernel D = (ℓx + iℓy)²/ℓ² of κ → γ1 + iγ2 on an ``ny × nx`` grid.

    Parameters
    ----------
    ny, nx
        Grid size in pixels along row (y) and col (x). Square pixels are assumed, so
        the kernel does not depend on the pixel scale.

    Returns
    -------
    numpy.ndarray
        complex128 ``[ny, nx]`` in numpy's FFT order (read-only, cached); D = 0 at ℓ = 0.

    Notes
    -----
    Re D = (ℓx² − ℓy²)/ℓ² and Im D = 2ℓxℓy/ℓ² (Kaiser & Squires 1993).
    """
    return _kernel_cached(int(ny), int(nx))


def fourier_ell(ny: int, nx: int, pixel_scale_arcmin: float) -> np.ndarray:
    """|ℓ| (radians⁻¹) of every mode of an ``ny × nx`` FFT grid, ``[ny, nx]`` in FFT order."""
    d = pixel_scale_arcmin * ARCMIN
    ly = 2 * np.pi * np.fft.fftfreq(ny, d=d)[:, None]
    lx = 2 * np.pi * np.fft.fftfreq(nx, d=d)[None, :]
    return np.sqrt(lx**2 + ly**2)


def _pad_width(ndim: int, pad: int) -> list[tuple[int, int]]:
    return [(0, 0)] * (ndim - 2) + [(pad, pad), (pad, pad)]


def _check_pad(pad: int) -> int:
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad = {pad}: the zero-padding must be >= 0 pixels")
    return pad


def _crop(a, pad: int):
    if pad == 0:
        return a
    return a[..., pad:-pad, pad:-pad]


def kappa_to_shear(kappa: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shear (γ1, γ2) of a convergence patch by FFT (numpy).

    Parameters
    ----------
    kappa
        Convergence ``[..., ny, nx]`` (dimensionless); leading axes (bin, sample) are batched.
    pad
        Zero-pixels added on every side before the FFT, to reduce periodic wrap-around;
        the result is cropped back to ``[..., ny, nx]``.

    Returns
    -------
    (g1, g2)
        float64 arrays ``[..., ny, nx]`` in DES convention (module docstring).
    """
    pad = _check_pad(pad)
    kappa = np.asarray(kappa, dtype=np.float64)
    if pad:
        kappa = np.pad(kappa, _pad_width(kappa.ndim, pad))
    kernel = shear_kernel(*kappa.shape[-2:])
    gamma = sfft.ifft2(kernel * sfft.fft2(kappa))
    gamma = _crop(gamma, pad)
    return gamma.real.copy(), gamma.imag.copy()


def kaiser_squires(g1: np.ndarray, g2: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Kaiser-Squires inversion (γ1, γ2) → (κ_E, κ_B) by FFT (numpy).

    Parameters
    ----------
    g1, g2
        Shear ``[..., ny, nx]``; masked pixels must already be zero-filled.
    pad
        Zero-pixels added on every side before the FFT; the result is cropped back.

    Returns
    -------
    (kappa_E, kappa_B)
        float64 ``[..., ny, nx]``: κ_E + iκ_B = ifft(D* fft(γ1 + iγ2)) (zero mean before
        cropping). κ_B is the null (B-mode) map. Same convention as lenspack's ``ks93``.
    """
    pad = _check_pad(pad)
    g1 = np.asarray(g1, dtype=np.float64)
    g2 = np.asarray(g2, dtype=np.float64)
    if g1.shape != g2.shape:
        raise ValueError(f"g1 shape {g1.shape} differs from g2 shape {g2.shape}")
    gamma = g1 + 1j * g2
    if pad:
        gamma = np.pad(gamma, _pad_width(gamma.ndim, pad))
    kernel = shear_kernel(*gamma.shape[-2:])
    kappa = _crop(sfft.ifft2(np.conj(kernel) * sfft.fft2(gamma)), pad)
    return kappa.real.copy(), kappa.imag.copy()


@functools.lru_cache(maxsize=16)
def _kernel_on_device(ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # cached so that a sampler calling the operator every step does not re-upload it
    return torch.from_numpy(np.array(shear_kernel(ny, nx))).to(device=device, dtype=dtype)


def _kernel_torch(ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
    ctype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
    return _kernel_on_device(int(ny), int(nx), like.device, ctype)


def kappa_to_shear_torch(kappa: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`kappa_to_shear`: differentiable, batched over leading axes.

    Parameters
    ----------
    kappa
        Real tensor ``[..., ny, nx]`` (float32 or float64, any device).
    pad
        Zero-pixels added on every side before the FFT; the result is cropped back.

    Returns
    -------
    (g1, g2)
        Tensors of ``kappa``'s dtype and shape.
    """
    pad = _check_pad(pad)
    if pad:
        kappa = torch.nn.functional.pad(kappa, (pad, pad, pad, pad))
    kernel = _kernel_torch(kappa.shape[-2], kappa.shape[-1], kappa)
    gamma = _crop(torch.fft.ifft2(kernel * torch.fft.fft2(kappa)), pad)
    return gamma.real, gamma.imag


def kaiser_squires_torch(
    g1: torch.Tensor, g2: torch.Tensor, pad: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`kaiser_squires`: differentiable, batched over leading axes."""
    pad = _check_pad(pad)
    if pad:
        # pad the real parts: constant padding of complex tensors is not supported everywhere
        g1 = torch.nn.functional.pad(g1, (pad, pad, pad, pad))
        g2 = torch.nn.functional.pad(g2, (pad, pad, pad, pad))
    gamma = torch.complex(g1, g2)
    kernel = _kernel_torch(gamma.shape[-2], gamma.shape[-1], g1)
    kappa = _crop(torch.fft.ifft2(torch.conj(kernel) * torch.fft.fft2(gamma)), pad)
    return kappa.real, kappa.imag


def gaussian_smooth(maps: np.ndarray, sigma_arcmin: float, pixel_scale_arcmin: float) -> np.ndarray:
    """Smooth maps ``[..., ny, nx]`` with a Gaussian of standard deviation ``sigma_arcmin``.

    The product is taken in Fourier space, exp(−ℓ²σ²/2), so the map is treated as
    periodic; pad beforehand where wrap-around matters. ``sigma_arcmin = 0`` returns a copy.
    """
    if sigma_arcmin < 0:
        raise ValueError(f"sigma_arcmin = {sigma_arcmin}: the smoothing scale must be >= 0")
    maps = np.asarray(maps, dtype=np.float64)
    if sigma_arcmin == 0:
        return maps.copy()
    ell = fourier_ell(*maps.shape[-2:], pixel_scale_arcmin)
    window = np.exp(-0.5 * (ell * sigma_arcmin * ARCMIN) ** 2)
    return sfft.ifft2(window * sfft.fft2(maps)).real


def kaiser_squires_patch(
    g1: np.ndarray,
    g2: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    pad: int = 0,
    smoothing_arcmin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Kaiser-Squires map of a data patch: masked pixels zero-filled, optional smoothing.

    Parameters
    ----------
    g1, g2
        Mean shear per pixel ``[..., ny, nx]``; values in masked pixels are ignored
        (they may be NaN).
    mask
        ``[..., ny, nx]``, 1 (or True) where observed, 0 where masked; broadcast with g1.
    pixel_scale_arcmin
        Pixel side in arcmin (for the smoothing scale).
    pad
        Zero-pixels added on every side; smoothing is applied on the padded map.
    smoothing_arcmin
        Standard deviation of the Gaussian smoothing in arcmin (0: none).

    Returns
    -------
    (kappa_E, kappa_B)
        float64 ``[..., ny, nx]``.
    """
    pad = _check_pad(pad)
    observed = np.broadcast_to(np.asarray(mask) > 0, np.shape(g1))
    gamma = np.where(observed, g1, 0.0) + 1j * np.where(observed, g2, 0.0)
    if pad:
        gamma = np.pad(gamma, _pad_width(gamma.ndim, pad))
    kernel = np.conj(shear_kernel(*gamma.shape[-2:]))
    if smoothing_arcmin:
        if smoothing_arcmin < 0:
            raise ValueError(f"smoothing_arcmin = {smoothing_arcmin} must be >= 0")
        ell = fourier_ell(*gamma.shape[-2:], pixel_scale_arcmin)
        kernel = kernel * np.exp(-0.5 * (ell * smoothing_arcmin * ARCMIN) ** 2)
    kappa = _crop(sfft.ifft2(kernel * sfft.fft2(gamma)), pad)
    return kappa.real.copy(), kappa.imag.copy()


def signal_power_grid(
    ell: np.ndarray, cl: np.ndarray, shape: tuple[int, int], pixel_scale_arcmin: float
) -> np.ndarray:
    """Variance of each unitary-DFT mode of κ on a grid, from a binned power spectrum.

    Parameters
    ----------
    ell
        Increasing multipoles ``[n_ell]`` (radians⁻¹) of the tabulated spectrum.
    cl
        Flat-sky power ``[..., n_ell]`` (steradians), e.g. one row per tomographic bin.
    shape
        ``(ny, nx)`` of the FFT grid.
    pixel_scale_arcmin
        Pixel side in arcmin.

    Returns
    -------
    numpy.ndarray
        S ``[..., ny, nx]`` with E|fft(κ)_k|²/(ny nx) = S_k, i.e. S = C(|ℓ_k|)/Ω_pix with
        Ω_pix the pixel solid angle; interpolated linearly in log ℓ - log C, constant
        beyond the tabulated range, and S = 0 at ℓ = 0 (the mean is not reconstructed).
    """
    ell = np.asarray(ell, dtype=np.float64)
    cl = np.asarray(cl, dtype=np.float64)
    if ell.ndim != 1 or cl.shape[-1] != ell.size:
        raise ValueError(f"ell shape {ell.shape} does not match the last axis of cl {cl.shape}")
    if np.any(np.diff(ell) <= 0) or ell[0] <= 0:
        raise ValueError("ell must be positive and strictly increasing")
    bad = ~np.isfinite(cl) | (cl <= 0)
    if bad.any():
        raise ValueError(
            f"signal power: {int(bad.sum())} of {cl.size} C_ell values are <= 0 or NaN"
        )
    grid_ell = fourier_ell(*shape, pixel_scale_arcmin)
    pix_area = (pixel_scale_arcmin * ARCMIN) ** 2
    logl = np.log(np.where(grid_ell > 0, grid_ell, ell[0]))
    flat = cl.reshape(-1, ell.size)
    out = np.stack([np.exp(np.interp(logl, np.log(ell), np.log(c))) for c in flat])
    out = out.reshape(*cl.shape[:-1], *shape) / pix_area
    out[..., grid_ell == 0] = 0.0
    return out


@dataclass(frozen=True)
class WienerResult:
    """Solution of the Wiener filter and the state of its conjugate-gradient solve.

    Attributes
    ----------
    kappa
        Wiener-filtered κ ``[..., ny, nx]`` (float64).
    iterations
        CG iterations per map ``[...]`` (int).
    residual
        Final relative residual ‖r‖/‖b‖ per map ``[...]`` of the preconditioned-variable
        system (module notes).
    converged
        ``residual <= tol`` per map ``[...]``.
    """

    kappa: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray
    converged: np.ndarray


def _shear_and_weight(
    g1: np.ndarray, g2: np.ndarray, sigma: np.ndarray, mask: np.ndarray, pad: int, caller: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Complex shear and inverse noise variance (0 where masked), both zero-padded.

    Raises ``ValueError`` naming ``caller`` and the count of observed pixels whose noise or
    shear is unusable.
    """
    pad = _check_pad(pad)
    g1 = np.asarray(g1, dtype=np.float64)
    shape = g1.shape
    observed = np.broadcast_to(np.asarray(mask) > 0, shape)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), shape)
    bad = observed & ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        raise ValueError(
            f"{caller}: {int(bad.sum())} observed pixels have a noise sigma that is "
            "not finite and > 0"
        )
    gamma = np.where(observed, g1, 0.0) + 1j * np.where(observed, np.asarray(g2), 0.0)
    bad = observed & ~np.isfinite(gamma)
    if bad.any():
        raise ValueError(f"{caller}: {int(bad.sum())} observed pixels have non-finite shear")
    weight = np.where(observed, 1.0 / np.where(observed, sigma, 1.0) ** 2, 0.0)
    if pad:
        gamma = np.pad(gamma, _pad_width(gamma.ndim, pad))
        weight = np.pad(weight, _pad_width(weight.ndim, pad))
    return gamma, weight, pad


def _pcg(
    hessian: Callable[[np.ndarray], np.ndarray],
    precond: Callable[[np.ndarray], np.ndarray],
    b: np.ndarray,
    x: np.ndarray,
    tol: float,
    max_iter: int,
    axes: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preconditioned conjugate gradients for a batch of independent SPD systems.

    ``axes`` are the axes of one system; every other axis indexes systems, which stop
    one by one as their relative residual ‖r‖/‖b‖ reaches ``tol``. Returns the solution,
    and the iterations and final relative residual per system.
    """

    def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.sum(u * v, axis=axes, keepdims=True)

    bnorm = np.sqrt(dot(b, b))
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    r = b - hessian(x)
    z = precond(r)
    p = z.copy()
    rz = dot(r, z)
    rel = np.sqrt(dot(r, r)) / bnorm
    iterations = np.zeros(rel.shape, dtype=int)
    for _ in range(max_iter):
        active = rel > tol
        if not active.any():
            break
        hp = hessian(p)
        php = dot(p, hp)
        alpha = np.where(active, rz / np.where(php > 0, php, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * hp
        z = precond(r)
        rz_new = dot(r, z)
        beta = rz_new / np.where(rz != 0, rz, 1.0)
        p = np.where(active, z + beta * p, p)
        rz = np.where(active, rz_new, rz)
        iterations += active
        rel = np.where(active, np.sqrt(dot(r, r)) / bnorm, rel)
    return x, iterations.squeeze(axis=axes), rel.squeeze(axis=axes)


def wiener_filter(
    g1: np.ndarray,
    g2: np.ndarray,
    sigma: np.ndarray,
    mask: np.ndarray,
    ell: np.ndarray,
    cl: np.ndarray,
    pixel_scale_arcmin: float,
    *,
    pad: int = 0,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> WienerResult:
    """Wiener filter of a masked shear patch with per-pixel noise, by preconditioned CG.

    Solves, independently for every map of the leading axes (tomographic bins),

        (S⁻¹ + Aᵀ N⁻¹ A) κ = Aᵀ N⁻¹ γ,

    with A the κ → (γ1, γ2) operator, N diagonal in pixels (σ² for each component,
    infinite, i.e. zero weight, where masked or in the padding) and S diagonal in
    Fourier space (:func:`signal_power_grid`).

    Parameters
    ----------
    g1, g2
        Mean shear per pixel ``[..., ny, nx]``; ignored where masked (may be NaN there).
    sigma
        Noise standard deviation per shear component ``[..., ny, nx]``; must be finite
        and > 0 wherever ``mask`` is set, ignored elsewhere.
    mask
        1 where observed, 0 where masked; broadcast with ``g1``.
    ell, cl
        Signal power spectrum of κ: ``ell [n_ell]`` (radians⁻¹) and ``cl [..., n_ell]``
        (steradians) with leading axes broadcasting against those of ``g1``.
    pixel_scale_arcmin
        Pixel side in arcmin.
    pad
        Zero-weight pixels added on every side, so the periodic FFT box does not wrap
        the patch onto itself; the result is cropped back.
    tol
        Relative residual ‖r‖/‖b‖ at which CG stops.
    max_iter
        Maximum CG iterations; maps not converged by then are flagged in the result.

    Returns
    -------
    WienerResult

    Notes
    -----
    CG runs on the whitened variable x = S^{-1/2} κ, i.e. on
    (I + S^{1/2} Aᵀ N⁻¹ A S^{1/2}) x = S^{1/2} Aᵀ N⁻¹ γ, which stays finite where S = 0
    (ℓ = 0). Because A is an isometry (AᵀA = I on zero-mean maps), Aᵀ N⁻¹ A ≈ w̄ I with
    w̄ the mean inverse noise variance over the grid, so the Fourier-diagonal
    preconditioner (I + w̄ S)⁻¹ is exact for homogeneous noise without a mask
    (one iteration: κ̂ = S/(S + σ²) κ̂_KS) and close otherwise. Masked pixels enter only
    through zero weight, so their data never affect the solution.
    """
    gamma, weight, pad = _shear_and_weight(g1, g2, sigma, mask, pad, "wiener_filter")
    grid = gamma.shape[-2:]
    kernel = shear_kernel(*grid)
    power = signal_power_grid(ell, cl, grid, pixel_scale_arcmin)
    power = np.broadcast_to(power, gamma.shape)
    sqrt_s = np.sqrt(power)
    wbar = weight.mean(axis=(-2, -1), keepdims=True)
    precond = 1.0 / (1.0 + wbar * power)

    def s_half(x: np.ndarray) -> np.ndarray:
        return sfft.ifft2(sqrt_s * sfft.fft2(x)).real

    def adjoint(y: np.ndarray) -> np.ndarray:
        return sfft.ifft2(np.conj(kernel) * sfft.fft2(y)).real

    def hessian(x: np.ndarray) -> np.ndarray:
        # (I + S^1/2 Aᵀ W A S^1/2) x, with the two S^1/2 folded into the kernel FFTs
        gam = sfft.ifft2(kernel * sqrt_s * sfft.fft2(x))
        back = sfft.ifft2(np.conj(kernel) * sqrt_s * sfft.fft2(weight * gam)).real
        return x + back

    def apply_precond(r: np.ndarray) -> np.ndarray:
        return sfft.ifft2(precond * sfft.fft2(r)).real

    b = s_half(adjoint(weight * gamma))
    # the preconditioned start is the exact solution for homogeneous noise and no mask
    x, iterations, rel = _pcg(hessian, apply_precond, b, apply_precond(b), tol, max_iter, (-2, -1))
    kappa = _crop(s_half(x), pad)
    return WienerResult(kappa=kappa, iterations=iterations, residual=rel, converged=rel <= tol)


def signal_covariance_grid(
    ell: np.ndarray, cl: np.ndarray, shape: tuple[int, int], pixel_scale_arcmin: float
) -> np.ndarray:
    """Joint covariance of the unitary-DFT modes of κ in several bins, from binned spectra.

    Parameters
    ----------
    ell
        Increasing multipoles ``[n_ell]`` (radians⁻¹).
    cl
        Auto and cross spectra ``[n_bins, n_bins, n_ell]`` (steradians), symmetric in the
        two bin axes, with a positive-definite bin-bin matrix at every tabulated ℓ.
    shape, pixel_scale_arcmin
        As in :func:`signal_power_grid`.

    Returns
    -------
    numpy.ndarray
        S ``[ny, nx, n_bins, n_bins]`` with E[κ̂_i κ̂_j*]/(ny nx) = S_ij per mode. The auto
        spectra are interpolated as in :func:`signal_power_grid` and the correlation
        coefficients C_ij/√(C_ii C_jj) linearly in log ℓ, so S is a convex combination of
        positive-definite correlation matrices scaled by the auto powers: positive
        semi-definite at every mode (0 at ℓ = 0).
    """
    ell = np.asarray(ell, dtype=np.float64)
    cl = np.asarray(cl, dtype=np.float64)
    if cl.ndim != 3 or cl.shape[0] != cl.shape[1] or cl.shape[-1] != ell.size:
        raise ValueError(
            f"cross spectra of shape {cl.shape}, expected [n_bins, n_bins, {ell.size}]"
        )
    if not np.allclose(cl, np.swapaxes(cl, 0, 1), rtol=1e-10, atol=0.0):
        raise ValueError("cross spectra are not symmetric in the two bin axes")
    n_bins = cl.shape[0]
    auto = cl[np.arange(n_bins), np.arange(n_bins)]
    power = signal_power_grid(ell, auto, shape, pixel_scale_arcmin)  # validates ell and auto
    corr = cl / np.sqrt(auto[:, None] * auto[None, :])
    lowest = np.linalg.eigvalsh(np.moveaxis(corr, -1, 0)).min(axis=-1)
    if np.any(lowest <= 0):
        bad = np.flatnonzero(lowest <= 0)
        raise ValueError(
            f"signal covariance: the bin-bin correlation matrix is not positive definite at "
            f"{bad.size} of {ell.size} ell values (first: ell = {ell[bad[0]]:.4g}, smallest "
            f"eigenvalue {lowest[bad[0]]:.3g})"
        )
    grid_ell = fourier_ell(*shape, pixel_scale_arcmin)
    logl = np.log(np.where(grid_ell > 0, grid_ell, ell[0]))
    out = np.empty((*shape, n_bins, n_bins))
    for i in range(n_bins):
        for j in range(i, n_bins):
            r = np.interp(logl, np.log(ell), corr[i, j])
            out[..., i, j] = out[..., j, i] = r * np.sqrt(power[i] * power[j])
    return out


def wiener_filter_tomographic(
    g1: np.ndarray,
    g2: np.ndarray,
    sigma: np.ndarray,
    mask: np.ndarray,
    ell: np.ndarray,
    cl: np.ndarray,
    pixel_scale_arcmin: float,
    *,
    pad: int = 0,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> WienerResult:
    """Wiener filter of all tomographic bins of a patch at once, with their cross-spectra.

    The same system as :func:`wiener_filter`, (S⁻¹ + Aᵀ N⁻¹ A) κ = Aᵀ N⁻¹ γ, but with κ
    the stack of the ``n_bins`` maps and S their joint covariance
    (:func:`signal_covariance_grid`): every bin's data inform every other bin through the
    structure they share along the line of sight. This is the posterior mean of a
    Gaussian field of those spectra, the optimum that a prior's non-Gaussian information
    has to improve on.

    Parameters
    ----------
    g1, g2, sigma, mask
        ``[n_bins, ny, nx]``, as in :func:`wiener_filter`.
    ell, cl
        ``ell [n_ell]`` and auto and cross spectra ``cl [n_bins, n_bins, n_ell]``.
    pixel_scale_arcmin, pad, tol, max_iter
        As in :func:`wiener_filter`.

    Returns
    -------
    WienerResult
        ``kappa [n_bins, ny, nx]``; ``iterations``, ``residual`` and ``converged`` are
        scalars (one joint system).

    Notes
    -----
    CG runs on x with κ = S^{1/2} x, S^{1/2} the symmetric square root of each mode's
    bin-bin matrix, and the preconditioner is (I + S^{1/2} diag(w̄) S^{1/2})⁻¹ mode by
    mode, with w̄ the mean inverse noise variance of each bin: exact for homogeneous
    noise without a mask, as in :func:`wiener_filter`.
    """
    g1 = np.asarray(g1, dtype=np.float64)
    if g1.ndim != 3:
        raise ValueError(f"shear of shape {g1.shape}, expected [n_bins, ny, nx]")
    n_bins = g1.shape[0]
    if np.shape(cl)[:2] != (n_bins, n_bins):
        raise ValueError(f"cross spectra of shape {np.shape(cl)} for {n_bins} bins of shear")
    gamma, weight, pad = _shear_and_weight(g1, g2, sigma, mask, pad, "wiener_filter_tomographic")
    grid = gamma.shape[-2:]
    kernel = shear_kernel(*grid)
    cov = signal_covariance_grid(ell, cl, grid, pixel_scale_arcmin)
    w, v = np.linalg.eigh(cov)
    root = (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)
    wbar = weight.mean(axis=(-2, -1))
    eye = np.eye(n_bins)
    precond = np.linalg.inv(eye + root @ (wbar[:, None] * root))

    def per_mode(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
        return sfft.ifft2(np.einsum("yxij,jyx->iyx", matrix, sfft.fft2(x))).real

    def adjoint(y: np.ndarray) -> np.ndarray:
        return sfft.ifft2(np.conj(kernel) * sfft.fft2(y)).real

    def hessian(x: np.ndarray) -> np.ndarray:
        gam = sfft.ifft2(kernel * sfft.fft2(per_mode(root, x)))
        return x + per_mode(root, adjoint(weight * gam))

    def apply_precond(r: np.ndarray) -> np.ndarray:
        return per_mode(precond, r)

    b = per_mode(root, adjoint(weight * gamma))
    x, iterations, rel = _pcg(
        hessian, apply_precond, b, apply_precond(b), tol, max_iter, (-3, -2, -1)
    )
    kappa = _crop(per_mode(root, x), pad)
    return WienerResult(kappa=kappa, iterations=iterations, residual=rel, converged=rel <= tol)
