"""Statistics of convergence maps, by topic.

- :mod:`.spectra` — flat-sky C_ℓ, cross-spectra, ρ_c(ℓ), ℓ₀.₅, ℓ bins, the ensemble band
- :mod:`.maps` — one-point PDF, peaks, κ-bin edges
- :mod:`.accuracy` — reconstructions against the truth (and the prior against the
  simulations): the accuracy measures of the scaling search and the validation comparisons

Every function is pure (arrays in, arrays out); the stages read and write the files.
"""

from .accuracy import (
    compare_prior,
    compare_statistics,
    corrected_mean_rho,
    mean_error,
    mean_rho,
    power_error,
    power_ratio,
)
from .maps import find_peaks, kappa_edges, one_point, pdf, peak_counts, truth_peaks
from .spectra import (
    correlation_coefficient,
    cross_spectrum_flat,
    crossing_ell,
    ell_bins_linear,
    ensemble_power_band,
    log_ell_bins,
    power_spectrum_flat,
    rho_from_spectra,
)

__all__ = [
    "compare_prior",
    "compare_statistics",
    "corrected_mean_rho",
    "correlation_coefficient",
    "cross_spectrum_flat",
    "crossing_ell",
    "ell_bins_linear",
    "ensemble_power_band",
    "find_peaks",
    "kappa_edges",
    "log_ell_bins",
    "mean_error",
    "mean_rho",
    "one_point",
    "pdf",
    "peak_counts",
    "power_error",
    "power_ratio",
    "power_spectrum_flat",
    "rho_from_spectra",
    "truth_peaks",
]
