"""DES-Y3 survey numbers: source densities, shape noise, calibration, footprint area,
and the source redshift distributions n(z) of the four tomographic bins.

Published values: Amon et al. (2022), Table 1; Gatti et al. (2021). The built-in n(z) is
this package's own parametric fit (:func:`desy3_nz`); :func:`read_nz` reads a user's file.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from scipy.special import erf

from .errors import KappadiffInputError

__all__ = [
    "DESY3_AREA_DEG2",
    "DESY3_M_BIAS",
    "DESY3_NZ_GAUSSIANS",
    "DESY3_NZ_ZMAX",
    "DESY3_N_BINS",
    "DESY3_N_EFF",
    "DESY3_SIGMA_E",
    "NZ_NEGATIVE_RTOL",
    "NzError",
    "desy3_nz",
    "read_nz",
]

log = logging.getLogger(__name__)

#: Number of tomographic source bins.
DESY3_N_BINS = 4
#: Effective source density per bin, arcmin^-2 (Amon et al. 2022, Table 1).
DESY3_N_EFF = np.array([1.476, 1.479, 1.484, 1.461])
#: Shape noise per ellipticity component, per bin.
DESY3_SIGMA_E = np.array([0.243, 0.262, 0.259, 0.301])
#: Multiplicative shear bias per bin.
DESY3_M_BIAS = np.array([-0.63, -1.98, -2.41, -3.69]) * 1e-2
#: Footprint area of the Y3 shape catalogue, deg^2.
DESY3_AREA_DEG2 = 4143.0

#: Parametric DES-Y3 source n(z): per bin, five Gaussian components (weight, mean, sigma),
#: fitted by this package (least squares on the density and 10x its cumulative
#: distribution, so that the high-z tail and hence the lensing efficiency are kept) to the
#: DES-Y3 SOMPZ source redshift distributions (Myles et al. 2021). The fit reproduces the
#: mean redshifts 0.336, 0.521, 0.741, 0.936 to within 0.006 and the Limber convergence
#: spectra to within a few per cent (tests/test_survey.py).
DESY3_NZ_GAUSSIANS = np.array(
    [
        [
            [0.03385, 0.08552, 0.02527],
            [0.54336, 0.21414, 0.07839],
            [0.16572, 0.36717, 0.06006],
            [0.23365, 0.47181, 0.10814],
            [0.02341, 1.96427, 0.74500],
        ],
        [
            [0.00555, 0.17745, 0.01307],
            [0.02571, 0.38185, 0.03871],
            [0.83171, 0.46591, 0.15164],
            [0.13007, 0.77362, 0.45938],
            [0.00695, 2.59180, 0.47022],
        ],
        [
            [0.32529, 0.66529, 0.08509],
            [0.29811, 0.66560, 0.26741],
            [0.31467, 0.82896, 0.08558],
            [0.05178, 0.95878, 0.04105],
            [0.01015, 1.36023, 0.74961],
        ],
        [
            [0.04066, 0.84182, 0.03273],
            [0.68683, 0.88325, 0.31235],
            [0.15489, 0.95886, 0.04635],
            [0.08936, 1.16854, 0.06919],
            [0.02825, 1.27504, 1.09789],
        ],
    ]
)

#: Largest redshift of the released DES-Y3 n(z) tables; the built-in n(z) is used up to it.
DESY3_NZ_ZMAX = 3.0

#: Negative n(z) values smaller in magnitude than this fraction of the bin's peak are
#: treated as noise of the redshift calibration and set to zero (counted and logged);
#: larger ones are an error. Released DES-Y3 n(z) tables hold such values at the 0.2% level.
NZ_NEGATIVE_RTOL = 1e-2


class NzError(KappadiffInputError):
    """An n(z) file or array is unusable; the message names the file and the bin."""


def desy3_nz(z: np.ndarray) -> np.ndarray:
    """Built-in DES-Y3 source redshift distributions of the four tomographic bins.

    Parameters
    ----------
    z : array_like, shape (nz,)
        Redshifts.

    Returns
    -------
    ndarray, shape (4, nz)
        Probability densities n_i(z) (per unit redshift), each normalised to unit integral
        over z >= 0, and zero at z < 0.

    Notes
    -----
    n_i(z) = sum_k a_k N(z; mu_k, sigma_k) / sum_k a_k Phi(mu_k / sigma_k) on z >= 0, with the
    components of :data:`DESY3_NZ_GAUSSIANS`; the denominator removes the z < 0 tails, so
    the normalisation is exact.
    """
    z = np.asarray(z, dtype=float)
    a = DESY3_NZ_GAUSSIANS[..., 0][..., None]
    mu = DESY3_NZ_GAUSSIANS[..., 1][..., None]
    sigma = DESY3_NZ_GAUSSIANS[..., 2][..., None]
    gauss = np.exp(-0.5 * ((z - mu) / sigma) ** 2) / (np.sqrt(2.0 * np.pi) * sigma)
    norm = np.sum(a * 0.5 * (1.0 + erf(mu / (np.sqrt(2.0) * sigma))), axis=1)
    nz = np.sum(a * gauss, axis=1) / norm
    return np.where(z >= 0.0, nz, 0.0)


def read_nz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read source redshift distributions from a DES 2pt FITS file or a text table.

    Parameters
    ----------
    path
        Either a FITS file with a table HDU ``nz_source`` holding columns ``Z_MID`` and
        ``BIN1`` .. ``BINn`` (the DES 2pt layout), or a whitespace-separated text table
        whose columns are z, n_1(z), ..., n_n(z) (``#`` comments allowed).

    Returns
    -------
    z : ndarray, shape (nz,)
        Strictly increasing, non-negative redshifts, as in the file.
    nz : ndarray, shape (n_bins, nz)
        Densities normalised to unit trapezoid integral over ``z``.

    Raises
    ------
    NzError
        Naming the file (and bin): unreadable layout, non-increasing or negative redshifts,
        non-finite values, negative values beyond :data:`NZ_NEGATIVE_RTOL` of the peak,
        or a bin that is zero everywhere.
    """
    path = os.fspath(path)
    if path.lower().endswith((".fits", ".fit", ".fits.gz")):
        from .products import open_fits  # a cut or altered file is named

        with open_fits(path) as hdul:
            names = [h.name for h in hdul]
            if "NZ_SOURCE" not in names:
                raise NzError(f"{path}: no HDU 'nz_source' (found {names})")
            data = hdul["NZ_SOURCE"].data
            cols = [c.upper() for c in data.columns.names]
            if "Z_MID" not in cols:
                raise NzError(f"{path}: HDU nz_source has no column Z_MID (found {cols})")
            bins = []
            while f"BIN{len(bins) + 1}" in cols:
                bins.append(np.asarray(data[f"BIN{len(bins) + 1}"], dtype=float))
            if not bins:
                raise NzError(f"{path}: HDU nz_source has no columns BIN1, BIN2, ...")
            z = np.asarray(data["Z_MID"], dtype=float)
            nz = np.stack(bins)
    else:
        try:
            table = np.loadtxt(path, ndmin=2)
        except ValueError as exc:
            raise NzError(f"{path}: not a numeric text table of z, n_1(z), ...: {exc}") from exc
        if table.shape[1] < 2:
            raise NzError(f"{path}: needs columns z, n_1(z), ...; found {table.shape[1]}")
        z, nz = table[:, 0], table[:, 1:].T.copy()
    return z, _checked_nz(z, nz, path)


def _checked_nz(z: np.ndarray, nz: np.ndarray, source: str) -> np.ndarray:
    """Validate n(z) read from ``source``, zero its small negative values, normalise it."""
    if not (np.all(np.isfinite(z)) and np.all(np.isfinite(nz))):
        raise NzError(f"{source}: non-finite redshift or n(z) values")
    if np.any(np.diff(z) <= 0) or z[0] < 0:
        raise NzError(f"{source}: redshifts must be non-negative and strictly increasing")
    nz = np.array(nz, dtype=float)
    for i, n in enumerate(nz):
        peak = n.max()
        if peak <= 0:
            raise NzError(f"{source}: bin {i + 1} is zero or negative everywhere")
        negative = n < 0
        if np.any(n < -NZ_NEGATIVE_RTOL * peak):
            raise NzError(
                f"{source}: bin {i + 1} has {int(np.sum(n < -NZ_NEGATIVE_RTOL * peak))} "
                f"negative values below -{NZ_NEGATIVE_RTOL:g} x its peak (min {n.min():.3g})"
            )
        if np.any(negative):
            log.warning(
                "%s: bin %d: %d small negative n(z) values (min %.3g) set to zero",
                source,
                i + 1,
                int(negative.sum()),
                n.min(),
            )
            n[negative] = 0.0
    return nz / np.trapezoid(nz, z, axis=1)[:, None]
