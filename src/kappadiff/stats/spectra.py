"""Power spectra of flat convergence patches: C_ℓ, cross-spectra, ρ_c(ℓ), ℓ₀.₅, ℓ bins.

Maps are ``[..., ny, nx]`` with square pixels of ``pixel_scale_arcmin``; every statistic
is computed per map of the leading axes (patch, sample, bin) and returned with those
axes in front. Spectra treat the patch as periodic (no apodisation): compare spectra
measured the same way, or pad/apodise beforehand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

from ..lensing import ARCMIN, fourier_ell

__all__ = [
    "correlation_coefficient",
    "crossing_ell",
    "cross_spectrum_flat",
    "ell_bins_linear",
    "ensemble_power_band",
    "log_ell_bins",
    "power_spectrum_flat",
    "rho_from_spectra",
]


def ell_bins_linear(ny: int, nx: int, pixel_scale_arcmin: float) -> np.ndarray:
    """Edges of ℓ bins one fundamental mode wide, from ℓ_f/2 up to the Nyquist ℓ.

    ℓ_f = 2π/L with L the longer side; every bin holds at least one mode, so these
    edges are safe for :func:`power_spectrum_flat` on an ``ny × nx`` grid.
    """
    ell_f = 2 * np.pi / (max(ny, nx) * pixel_scale_arcmin * ARCMIN)
    ell_nyq = np.pi / (pixel_scale_arcmin * ARCMIN)
    n_bins = int(np.floor(ell_nyq / ell_f - 0.5))
    return ell_f * (0.5 + np.arange(n_bins + 1))


def _binning(shape: tuple[int, int], pixel_scale_arcmin: float, ell_bins: Sequence[float]):
    edges = np.asarray(ell_bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("ell_bins must be at least two strictly increasing bin edges")
    ell = fourier_ell(*shape, pixel_scale_arcmin).ravel()
    # the ℓ = 0 mode (the patch mean) is never part of a spectrum
    index = np.where(ell > 0, np.searchsorted(edges, ell, side="right") - 1, -1)
    index[(index < 0) | (index >= edges.size - 1)] = -1
    n_bins = edges.size - 1
    counts = np.bincount(index[index >= 0], minlength=n_bins)
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)
        raise ValueError(
            f"{empty.size} of {n_bins} ell bins hold no Fourier mode of a {shape} grid at "
            f"{pixel_scale_arcmin} arcmin/pixel (first empty: [{edges[empty[0]]:.4g}, "
            f"{edges[empty[0] + 1]:.4g}))"
        )
    ell_mean = np.bincount(index[index >= 0], weights=ell[index >= 0], minlength=n_bins) / counts
    return index, counts, ell_mean


def _binned_average(values: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    lead = values.shape[:-2]
    flat = values.reshape(-1, values.shape[-2] * values.shape[-1])
    keep = index >= 0
    n_bins = counts.size
    out = np.empty((flat.shape[0], n_bins))
    for i, row in enumerate(flat):
        out[i] = np.bincount(index[keep], weights=row[keep], minlength=n_bins) / counts
    return out.reshape(*lead, n_bins)


def cross_spectrum_flat(
    a: np.ndarray, b: np.ndarray, pixel_scale_arcmin: float, ell_bins: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Binned flat-sky cross power spectrum of maps ``a`` and ``b``.

    Parameters
    ----------
    a, b
        Maps ``[..., ny, nx]`` of the same shape (dimensionless, e.g. κ).
    pixel_scale_arcmin
        Pixel side in arcmin.
    ell_bins
        Bin edges in ℓ (radians⁻¹); a mode belongs to [edge_i, edge_{i+1}).

    Returns
    -------
    (ell, cl)
        ``ell [n_bins]`` the mean |ℓ| of the modes in each bin, and ``cl [..., n_bins]``
        in steradians: C_ℓ = Ω_pix Re(â b̂*)/(ny nx), averaged over the modes of the bin,
        with â the unnormalised DFT and Ω_pix the pixel solid angle. For a Gaussian field
        of flat-sky power C(ℓ), E[C_ℓ] = C(ℓ) (up to the pixel window).

    Raises
    ------
    ValueError
        If the shapes differ or a bin holds no mode.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cross spectrum of maps of shapes {a.shape} and {b.shape}")
    shape = a.shape[-2:]
    index, counts, ell_mean = _binning(shape, pixel_scale_arcmin, ell_bins)
    fa = sfft.fft2(a)
    fb = fa if b is a else sfft.fft2(b)
    norm = (pixel_scale_arcmin * ARCMIN) ** 2 / (shape[0] * shape[1])
    power = (fa * np.conj(fb)).real * norm
    return ell_mean, _binned_average(power, index, counts)


def power_spectrum_flat(
    maps: np.ndarray, pixel_scale_arcmin: float, ell_bins: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Binned flat-sky power spectrum of maps ``[..., ny, nx]``; see :func:`cross_spectrum_flat`."""
    maps = np.asarray(maps, dtype=np.float64)
    return cross_spectrum_flat(maps, maps, pixel_scale_arcmin, ell_bins)


def correlation_coefficient(
    a: np.ndarray,
    b: np.ndarray,
    pixel_scale_arcmin: float,
    ell_bins: Sequence[float],
    average_axes: int | tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier-space correlation coefficient ρ_c(ℓ) = C_ab / √(C_aa C_bb).

    Parameters
    ----------
    a, b
        Maps ``[..., ny, nx]``, e.g. reconstruction and truth.
    pixel_scale_arcmin, ell_bins
        As in :func:`cross_spectrum_flat`.
    average_axes
        Leading axes (e.g. the patch axis) over which the three spectra are averaged
        before the ratio, as in Boruah et al. (2025) for ρ_c of a set of patches.

    Returns
    -------
    (ell, rho)
        ``ell [n_bins]`` and ``rho [..., n_bins]`` (averaged axes removed), in [−1, 1].
    """
    ell, cab = cross_spectrum_flat(a, b, pixel_scale_arcmin, ell_bins)
    _, caa = power_spectrum_flat(a, pixel_scale_arcmin, ell_bins)
    _, cbb = power_spectrum_flat(b, pixel_scale_arcmin, ell_bins)
    axes = (average_axes,) if isinstance(average_axes, int) else tuple(average_axes)
    lead = cab.ndim - 1
    for ax in axes:
        if not -lead <= ax < lead:
            raise ValueError(f"average_axes {axes} outside the {lead} leading axes of the maps")
    if axes:
        axes = tuple(ax % lead for ax in axes)
        cab, caa, cbb = (c.mean(axis=axes) for c in (cab, caa, cbb))
    return ell, rho_from_spectra(cab, caa, cbb)


def rho_from_spectra(cab: np.ndarray, caa: np.ndarray, cbb: np.ndarray) -> np.ndarray:
    """ρ_c = C_ab/√(C_aa C_bb) of (averaged) binned spectra; 0 where an auto-spectrum is 0."""
    denom = np.sqrt(caa * cbb)
    return np.divide(cab, denom, out=np.zeros_like(cab, dtype=np.float64), where=denom > 0)


def crossing_ell(ell: np.ndarray, rho: np.ndarray, level: float = 0.5) -> np.ndarray:
    """The ℓ at which ρ_c(ℓ) first falls below ``level`` (the paper quotes level 0.5).

    Parameters
    ----------
    ell
        Increasing multipoles ``[n_bins]``.
    rho
        Correlation coefficients ``[..., n_bins]``.
    level
        The threshold.

    Returns
    -------
    numpy.ndarray
        ``[...]``: ℓ of the first downward crossing, interpolated linearly in log ℓ
        between the two bins around it; the first ``ell`` if ρ starts below ``level``;
        NaN if ρ never falls below ``level`` within the range.
    """
    ell = np.asarray(ell, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    if rho.shape[-1] != ell.size:
        raise ValueError(f"rho's last axis ({rho.shape[-1]}) differs from ell ({ell.size})")
    flat = rho.reshape(-1, ell.size)
    out = np.full(flat.shape[0], np.nan)
    for i, r in enumerate(flat):
        below = np.flatnonzero(r < level)
        if below.size == 0:
            continue
        j = below[0]
        if j == 0:
            out[i] = ell[0]
            continue
        frac = (r[j - 1] - level) / (r[j - 1] - r[j])
        out[i] = np.exp(np.log(ell[j - 1]) + frac * (np.log(ell[j]) - np.log(ell[j - 1])))
    return out.reshape(rho.shape[:-1])


def log_ell_bins(npix: int, pixel_scale_arcmin: float, n_bins: int) -> np.ndarray:
    """Logarithmic ℓ-bin edges from the fundamental mode to Nyquist, none of them empty.

    Starts from ``n_bins`` log-spaced bins between 0.75 ℓ_f and ℓ_Nyquist and merges bins that
    hold no Fourier mode of the ``npix × npix`` grid (the lowest ones on a small patch).
    """
    ell = fourier_ell(npix, npix, pixel_scale_arcmin).ravel()
    modes = ell[ell > 0]
    ell_nyq = 180.0 * 60.0 / pixel_scale_arcmin  # π / (pixel side in radians)
    edges = np.geomspace(0.75 * modes.min(), ell_nyq, n_bins + 1)

    def filled(lo: float, hi: float) -> bool:
        return bool(np.any((modes >= lo) & (modes < hi)))

    keep = [edges[0]]
    for e in edges[1:-1]:
        if filled(keep[-1], e):
            keep.append(e)
    keep.append(edges[-1])
    if len(keep) > 2 and not filled(keep[-2], keep[-1]):
        del keep[-2]
    return np.asarray(keep)


def ensemble_power_band(
    cl: np.ndarray, n_patch: int, n_draws: int = 2000, seed: int = 0, level: float = 95.0
) -> dict[str, np.ndarray]:
    """The ensemble C_ℓ and the scatter of its average over ``n_patch`` patches.

    Parameters
    ----------
    cl
        ``[cut-out, bin, n_ell]``: binned C_ℓ of simulated patches (the training cut-outs).
    n_patch
        Patches in the validation average.
    n_draws, seed
        Random sets of ``n_patch`` distinct cut-outs.
    level
        Central percentage of the sets' averages that the band holds.

    Returns
    -------
    dict
        ``cl [bin, n_ell]``, the mean over all cut-outs, and ``cl_lo``, ``cl_hi`` [bin,
        n_ell], the band of ``n_patch``-patch averages. A validation set whose truth lies
        outside it differs from the ensemble by more than patch sample variance; a posterior
        that follows the prior where the data are weak then differs from that truth too.
        Cut-outs from all over the sky are independent; patches of one footprint share
        large-scale modes, so the band is narrower than the scatter of real patch sets.
    """
    cl = np.asarray(cl, dtype=np.float64)
    if not 1 <= n_patch <= cl.shape[0]:
        raise ValueError(f"ensemble_power_band: {n_patch} patches from {cl.shape[0]} cut-outs")
    rng = np.random.default_rng(seed)
    means = np.stack(
        [cl[rng.choice(cl.shape[0], n_patch, replace=False)].mean(axis=0) for _ in range(n_draws)]
    )
    tail = 0.5 * (100.0 - level)
    lo, hi = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return {"cl": cl.mean(axis=0), "cl_lo": lo, "cl_hi": hi}
