"""How close reconstructions come to the truth: pixel error, ρ_c, power, and whole comparisons.

The accuracy measures of the likelihood-scaling search (:func:`mean_error`, :func:`mean_rho`,
:func:`power_ratio`, :func:`power_error`) and the comparisons behind the validation tables
and figures: :func:`compare_statistics` (each method against the truth on the mocks) and
:func:`compare_prior` (prior draws against the simulations).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .maps import one_point
from .spectra import cross_spectrum_flat, crossing_ell, power_spectrum_flat, rho_from_spectra

__all__ = [
    "compare_prior",
    "compare_statistics",
    "corrected_mean_rho",
    "mean_error",
    "mean_rho",
    "power_error",
    "power_ratio",
]


def mean_error(mean: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Relative squared error of posterior means against the truths, per bin and joint.

    Parameters
    ----------
    mean, truth
        ``[patch, bin, n, n]``. Each map's own average (ℓ = 0, which shear does not
        constrain) is removed from both first.

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: ``Σ (mean − truth)² / Σ truth²`` per bin, the joint value (the average
        over bins) first. 1 for a mean of zero, 0 for a perfect map.
    """
    m = mean - mean.mean(axis=(-2, -1), keepdims=True)
    t = truth - truth.mean(axis=(-2, -1), keepdims=True)
    per_bin = ((m - t) ** 2).sum(axis=(0, 2, 3)) / (t**2).sum(axis=(0, 2, 3))
    return np.concatenate([[per_bin.mean()], per_bin])


def mean_rho(
    mean: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
) -> np.ndarray:
    """Cross-correlation of posterior means with the truths, averaged over ℓ bins.

    Parameters
    ----------
    mean, truth, mask
        ``[patch, bin, n, n]``; ``mask`` is 1 where observed. Spectra are of the maps times
        the mask, as in :func:`compare_statistics`.
    pixel_scale_arcmin, ell_edges
        Pixel side and ℓ-bin edges ``[n_ell + 1]`` (:func:`kappadiff.stats.spectra.log_ell_bins`).

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: ρ_c(ℓ) (spectra averaged over patches first) averaged over the ℓ
        bins, per bin, with the joint value (the average over bins) first. 1 for a perfect
        map at any amplitude, 0 for a map uncorrelated with the truth.

    Notes
    -----
    This is the accuracy by which the scaling search ranks calibrated candidates. Unlike the
    pixel error (:func:`mean_error`), which the large scales dominate and which rewards a
    mean shrunk towards zero, it weighs every ℓ bin alike and ignores the amplitude, which
    the calibration test already constrains: two scalings whose means differ by 1–2 % in
    pixel error can differ by 2× in ρ_c at ℓ < 500 (docs/validation.md).
    """
    m = np.asarray(mean, dtype=np.float64) * mask
    t = np.asarray(truth, dtype=np.float64) * mask
    _, cross = cross_spectrum_flat(m, t, pixel_scale_arcmin, ell_edges)
    _, cmm = power_spectrum_flat(m, pixel_scale_arcmin, ell_edges)
    _, ctt = power_spectrum_flat(t, pixel_scale_arcmin, ell_edges)
    rho = rho_from_spectra(cross.mean(axis=0), cmm.mean(axis=0), ctt.mean(axis=0))
    per_bin = rho.mean(axis=-1)
    return np.concatenate([[per_bin.mean()], per_bin])


def corrected_mean_rho(
    samples: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
) -> np.ndarray:
    """ρ_c(ℓ) of the posterior mean with the truth, as if it had no sampling noise.

    The mean ``m̂`` of ``n`` posterior samples is the posterior mean ``m`` plus noise whose
    power is ``C_ℓ^{s−m}/n``, so it correlates less with the truth than ``m`` does (for
    ``ρ² = r`` the mean of ``n`` samples has ``ρ = r/√(r + (1 − r)/n)``). This removes the
    noise's power, estimated without bias from the samples' scatter about ``m̂``, from
    ``m̂``'s auto-spectrum (the noise is uncorrelated with the truth, so the cross-spectrum
    needs none):

        ρ_c = C_ℓ^{m̂t} / √(C_ℓ^{tt} [C_ℓ^{m̂m̂} − Σ_i C_ℓ^{s_i − m̂} / (n (n − 1))]).

    Parameters
    ----------
    samples
        ``[sample, patch, bin, n, n]``, at least two samples.
    truth, mask
        ``[patch, bin, n, n]``; spectra are of the maps times the mask (1 where observed),
        averaged over patches before the ratio, as :func:`mean_rho`.
    pixel_scale_arcmin, ell_edges
        Pixel side and ℓ-bin edges.

    Returns
    -------
    numpy.ndarray
        ``[bin, ℓ]``; 0 where the corrected auto-spectrum is not positive.
    """
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"corrected ρ_c needs at least 2 samples, got {n}")
    m = samples.mean(axis=0) * mask
    t = np.asarray(truth, dtype=np.float64) * mask
    _, cross = cross_spectrum_flat(m, t, pixel_scale_arcmin, ell_edges)
    _, cmm = power_spectrum_flat(m, pixel_scale_arcmin, ell_edges)
    _, ctt = power_spectrum_flat(t, pixel_scale_arcmin, ell_edges)
    _, scatter = power_spectrum_flat(samples * mask - m, pixel_scale_arcmin, ell_edges)
    noise = scatter.sum(axis=0) / (n * (n - 1))
    cmm_clean = np.clip((cmm - noise).mean(axis=0), 0.0, None)
    return rho_from_spectra(cross.mean(axis=0), cmm_clean, ctt.mean(axis=0))


def power_ratio(
    samples: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """ℓ and C̄_ℓ^samples/C̄_ℓ^truth ``[bin, ℓ]``, arguments as for :func:`power_error`."""
    s = np.asarray(samples, dtype=np.float64) * mask
    t = np.asarray(truth, dtype=np.float64) * mask
    ell, css = power_spectrum_flat(s, pixel_scale_arcmin, ell_edges)
    _, ctt = power_spectrum_flat(t, pixel_scale_arcmin, ell_edges)
    return ell, css.mean(axis=(0, 1)) / ctt.mean(axis=0)


def power_error(ratio: np.ndarray) -> np.ndarray:
    """How far the samples' power strays from the truth's: the mean over ℓ of |C̄_ℓ^s/C̄_ℓ^t − 1|.

    Parameters
    ----------
    ratio
        ``[bin, ℓ]``: the samples' C_ℓ (``samples [sample, patch, bin, n, n]``, averaged over
        samples and patches) over the truths' (``[patch, bin, n, n]``, averaged over
        patches), of the maps times the mask (1 where observed): :func:`power_ratio`.

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: per bin, the relative deviation of the samples' C_ℓ from the
        truths', its absolute value averaged over the ℓ bins; the largest over bins first.

    Notes
    -----
    Draws of a calibrated posterior are distributed like the truth over the data, so their
    mean power matches the truth's on the same patches. A likelihood step that is too
    strong fits the noise and adds power at every ℓ (unscaled DPS: 2–3× at 4′); TARP on
    block averages of a few sub-regions can miss that (docs/validation.md). The average
    over ℓ keeps a systematic excess and lets one ℓ bin of few modes, where the truths of a
    few patches stray from their ensemble, count for only its share.
    """
    per_bin = np.abs(np.asarray(ratio, dtype=np.float64) - 1.0).mean(axis=-1)
    return np.concatenate([[per_bin.max()], per_bin])


def compare_statistics(
    maps: Mapping[str, np.ndarray],
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
    pdf_edges: np.ndarray,
    peak_edges: np.ndarray,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """C_ℓ, ρ_c(ℓ) with the truth, ℓ₀.₅, PDF and peak counts of each method, per bin.

    Parameters
    ----------
    maps
        ``{"truth": [patch, bin, n, n], "samples": [sample, patch, bin, n, n], other
        method: [patch, bin, n, n]}``.
    mask
        ``[patch, bin, n, n]``, 1 where observed. Every statistic is of the observed pixels
        only (outside them KS is zero-filled and the posterior is the prior's): spectra
        are of the maps times the mask, truth and method alike (pseudo-spectra, which
        equal the spectra on fully observed patches), PDF and peaks count observed pixels.
    pixel_scale_arcmin
        Pixel side.
    ell_edges
        ℓ-bin edges ``[n_ell + 1]``.
    pdf_edges, peak_edges
        κ-bin edges of the PDF and of the peak heights, per bin ``[bin, n + 1]``.
    n_bootstrap, seed
        Resamplings of the patches (with replacement; the same draws for every method)
        behind the scatter of ℓ₀.₅: few patches hold few low-ℓ modes.

    Returns
    -------
    dict
        ``out[method]`` with ``ell [n_ell]``, ``cl [bin, n_ell]`` (mean over patches and
        samples), ``rho [bin, n_ell]`` (spectra averaged over patches, and samples, before
        the ratio), ``ell_half [bin]`` (ℓ where ρ_c falls to 0.5; NaN if it never does),
        ``pdf [bin, n_pdf]`` and ``peaks [bin, n_peak]`` (peaks per patch) at the bin centres
        ``pdf_kappa`` and ``peak_kappa`` (same shapes), and ``rho_boot [n_bootstrap, bin,
        n_ell]`` and ``ell_half_boot [n_bootstrap, bin]``, ρ_c and ℓ₀.₅ of each patch
        resampling. For the samples,
        ``cl_lo``/``cl_hi`` are the 16/84th percentiles of the per-sample C_ℓ.

    Notes
    -----
    ρ_c(ℓ) = C_ℓ^{xt}/√(C_ℓ^{xx} C_ℓ^{tt}) (Boruah et al. 2025, eq. 9), with the three
    spectra averaged over patches (and samples) first.
    """
    truth = np.asarray(maps["truth"], dtype=np.float64)
    n_patch, n_bins = truth.shape[:2]
    draws = np.random.default_rng(seed).integers(0, n_patch, size=(n_bootstrap, n_patch))
    # spectra of the observed pixels (maps x mask, truth and method alike): in masked
    # pixels the posterior is the prior's and KS is zero-filled, neither measured
    truth_obs = truth * mask
    _, cl_truth = power_spectrum_flat(truth_obs, pixel_scale_arcmin, ell_edges)
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, m in maps.items():
        m = np.asarray(m, dtype=np.float64)
        lead = (0, 1) if method == "samples" else (0,)
        msk = np.broadcast_to(mask, m.shape)
        m_obs = m * msk
        ell, cl = power_spectrum_flat(m_obs, pixel_scale_arcmin, ell_edges)
        _, cross = cross_spectrum_flat(
            m_obs, np.broadcast_to(truth_obs, m.shape), pixel_scale_arcmin, ell_edges
        )
        # per-patch spectra [patch, bin, ell] (samples averaged), then over patches
        per_patch = [c.mean(axis=0) if method == "samples" else c for c in (cross, cl)]
        per_patch.append(cl_truth)
        rho = rho_from_spectra(*(c.mean(axis=0) for c in per_patch))
        # [n_bootstrap, bin, ell]
        boot = rho_from_spectra(*(c[draws].mean(axis=1) for c in per_patch))
        res = {
            "ell": ell,
            "cl": cl.mean(axis=lead),
            "rho": rho,
            "ell_half": crossing_ell(ell, rho, 0.5),
            "ell_half_boot": crossing_ell(ell, boot, 0.5),
            "rho_boot": boot,
        }
        if method == "samples":
            per_sample = cl.mean(axis=1)  # [sample, bin, ell]
            res["cl_lo"], res["cl_hi"] = np.percentile(per_sample, [16.0, 84.0], axis=0)
        res.update(one_point(m, msk, pdf_edges, peak_edges, lead))
        out[method] = res
    return out


def compare_prior(
    draws: np.ndarray,
    sims: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
    pdf_edges: np.ndarray,
    peak_edges: np.ndarray,
    sims_cl: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """C_ℓ, one-point PDF and peak counts of prior draws and of simulated patches.

    Parameters
    ----------
    draws, sims
        ``[map, bin, n, n]``: unconditional draws of the prior and training cut-outs.
    pixel_scale_arcmin, ell_edges
        Pixel side and ℓ-bin edges ``[n_ell + 1]``.
    pdf_edges, peak_edges
        κ-bin edges per bin ``[bin, n + 1]``.
    sims_cl
        Optional binned C_ℓ ``[cut-out, bin, n_ell]`` of more simulated patches than
        ``sims`` (:func:`kappadiff.stages.baselines.cutout_spectra`) for the simulations'
        C_ℓ, so that its error is small against the draws'.

    Returns
    -------
    dict
        ``out["prior"]``, ``out["simulations"]``: ``ell``, ``cl [bin, n_ell]`` (mean over
        maps) and ``cl_err`` (its standard error), ``pdf``/``pdf_kappa`` and
        ``peaks``/``peak_kappa`` ``[bin, n]`` (peaks per map).
    """
    out = {}
    for name, maps in (("prior", draws), ("simulations", sims)):
        maps = np.asarray(maps, dtype=np.float64)
        if name == "simulations" and sims_cl is not None:
            cl = np.asarray(sims_cl, dtype=np.float64)
            ell = power_spectrum_flat(maps[:1], pixel_scale_arcmin, ell_edges)[0]
        else:
            ell, cl = power_spectrum_flat(maps, pixel_scale_arcmin, ell_edges)
        res = {
            "ell": ell,
            "cl": cl.mean(axis=0),
            "cl_err": cl.std(axis=0, ddof=1) / np.sqrt(cl.shape[0]),
        }
        res.update(one_point(maps, None, pdf_edges, peak_edges, (0,)))
        out[name] = res
    return out
