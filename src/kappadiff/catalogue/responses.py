"""Metacalibration shear responses and the per-bin shear calibration.

:class:`ResponseSums` accumulates, chunk by chunk, the weighted sums the response needs;
:func:`shear_calibration_from_sums` turns them into a :class:`ShearCalibration`
(``g = R^-1 (e - c) / (1 + m)`` per tomographic bin: response, selection response,
additive term, multiplicative bias), which :func:`apply_shear_calibration` applies to the
ellipticities of galaxies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .cuts import CatalogueError, GalaxyChunk

__all__ = [
    "METACAL_DGAMMA",
    "SHEARED_SELECTIONS",
    "ResponseSums",
    "ShearCalibration",
    "apply_shear_calibration",
    "shear_calibration_from_sums",
]

#: Metacalibration sheared catalogues, in the order (component 1 +, 1 -, 2 +, 2 -).
SHEARED_SELECTIONS = ("1p", "1m", "2p", "2m")
#: Applied shear of the metacalibration sheared catalogues (Sheldon & Huff 2017): +-0.01.
METACAL_DGAMMA = 0.02


@dataclass
class ResponseSums:
    """Weighted per-bin sums, accumulated chunk by chunk, that the calibration needs.

    Attributes (n_b = number of bins)
    ----------
    w : (n_b,)            sum of weights of the selected (unsheared) galaxies
    we : (n_b, 2)         sum of w e_i
    wr : (n_b, 2, 2)      sum of w R_gamma,ij (zero when the catalogue has no response)
    has_response : bool   whether any response was accumulated
    sel_w : (4, n_b)      sum of weights of each sheared selection (1p, 1m, 2p, 2m)
    sel_we : (4, n_b, 2)  sum of w e_i (unsheared e) over each sheared selection
    """

    n_bins: int
    w: np.ndarray = None
    we: np.ndarray = None
    wr: np.ndarray = None
    has_response: bool = False
    has_selection: bool = False
    sel_w: np.ndarray = None
    sel_we: np.ndarray = None

    def __post_init__(self) -> None:
        nb = self.n_bins
        self.w = np.zeros(nb)
        self.we = np.zeros((nb, 2))
        self.wr = np.zeros((nb, 2, 2))
        self.sel_w = np.zeros((len(SHEARED_SELECTIONS), nb))
        self.sel_we = np.zeros((len(SHEARED_SELECTIONS), nb, 2))

    def add(self, chunk: GalaxyChunk) -> None:
        """Add galaxies that passed the quality cuts (the unsheared selection)."""
        b, w = chunk.bin.astype(np.int64), chunk.weight.astype(np.float64)
        nb = self.n_bins
        self.w += np.bincount(b, w, minlength=nb)
        self.we[:, 0] += np.bincount(b, w * chunk.e1, minlength=nb)
        self.we[:, 1] += np.bincount(b, w * chunk.e2, minlength=nb)
        if chunk.response is not None:
            self.has_response = True
            r = chunk.response
            if r.ndim == 1:
                r = r[:, None, None] * np.eye(2)
            for i in range(2):
                for j in range(2):
                    self.wr[:, i, j] += np.bincount(b, w * r[:, i, j], minlength=nb)

    def add_selection(
        self, which: str, bins: np.ndarray, weight: np.ndarray, e1: np.ndarray, e2: np.ndarray
    ) -> None:
        """Add galaxies of a sheared selection ``which`` (one of :data:`SHEARED_SELECTIONS`).

        ``bins`` and ``weight`` are those of the sheared catalogue; ``e1, e2`` are the
        unsheared ellipticities (the selection response measures how the selection
        changes the mean of the unsheared shapes; Sheldon & Huff 2017, eq. 15).
        """
        k = SHEARED_SELECTIONS.index(which)
        self.has_selection = True
        ok = (bins >= 0) & (weight > 0) & np.isfinite(e1) & np.isfinite(e2) & np.isfinite(weight)
        b, w = bins[ok].astype(np.int64), weight[ok].astype(np.float64)
        nb = self.n_bins
        self.sel_w[k] += np.bincount(b, w, minlength=nb)
        self.sel_we[k, :, 0] += np.bincount(b, w * e1[ok], minlength=nb)
        self.sel_we[k, :, 1] += np.bincount(b, w * e2[ok], minlength=nb)


@dataclass(frozen=True)
class ShearCalibration:
    """Per-bin shear calibration ``g = R^-1 (e - c) / (1 + m)``.

    Attributes (n_b bins)
    ----------
    response : (n_b, 2, 2)   total response R = <R_gamma> + R_S
    selection : (n_b, 2, 2)  selection response R_S (zero where not measured)
    mean_e : (n_b, 2)        additive term c subtracted (zero unless requested)
    m : (n_b,)               multiplicative bias
    """

    response: np.ndarray
    selection: np.ndarray
    mean_e: np.ndarray
    m: np.ndarray

    @classmethod
    def identity(cls, n_bins: int, m: Sequence[float] | None = None) -> ShearCalibration:
        """No response correction and no mean subtraction (mocks, calibrated catalogues)."""
        return cls(
            np.broadcast_to(np.eye(2), (n_bins, 2, 2)).copy(),
            np.zeros((n_bins, 2, 2)),
            np.zeros((n_bins, 2)),
            np.zeros(n_bins) if m is None else np.asarray(m, dtype=np.float64),
        )

    def header(self) -> dict[str, float]:
        """FITS cards RESP{b}{ij}, RSEL{b}{ij} (diagonal), MBIAS{b}, MEANE{b}{i} per bin."""
        cards = {}
        for b in range(len(self.m)):
            for i in range(2):
                cards[f"RESP{b + 1}{i + 1}{i + 1}"] = float(self.response[b, i, i])
                cards[f"RSEL{b + 1}{i + 1}{i + 1}"] = float(self.selection[b, i, i])
                cards[f"MEANE{b + 1}{i + 1}"] = float(self.mean_e[b, i])
            cards[f"MBIAS{b + 1}"] = float(self.m[b])
        return cards


def shear_calibration_from_sums(
    sums: ResponseSums,
    m: Sequence[float] | None = None,
    subtract_mean: bool = False,
    where: str = "catalogue",
) -> ShearCalibration:
    """Metacalibration response per bin from accumulated sums.

    The shear response of bin b is ``R = <R_gamma>_w + R_S`` with the selection response
    ``R_S,ij = (<e_i>_{S,j+} - <e_i>_{S,j-}) / 0.02`` (Sheldon & Huff 2017, eqs. 14-15;
    Gatti et al. 2021, eq. 4), where ``<.>_{S,j+-}`` is the weighted mean of the unsheared
    ellipticity over the galaxies selected (and binned, and weighted) on the catalogue
    sheared by +-0.01 along component j.

    Parameters
    ----------
    sums
        Accumulated sums (:meth:`ResponseSums.add`, :meth:`ResponseSums.add_selection`).
    m
        Multiplicative bias per bin, or None for zero.
    subtract_mean
        Subtract the weighted mean ellipticity of each bin (additive bias, Gatti et al.
        2021, sec. 4.1) before the response correction.
    where
        Catalogue name for error messages.

    Raises
    ------
    CatalogueError
        A bin with no weight, or a singular response.
    """
    nb = sums.n_bins
    empty = np.flatnonzero(sums.w <= 0)
    if empty.size:
        raise CatalogueError(
            f"{where}: tomographic bin(s) {(empty + 1).tolist()} hold no usable galaxy; "
            "the response cannot be measured"
        )
    if sums.has_response:
        response = sums.wr / sums.w[:, None, None]
    else:
        response = np.broadcast_to(np.eye(2), (nb, 2, 2)).copy()
    selection = np.zeros((nb, 2, 2))
    if sums.has_selection:
        if np.any(sums.sel_w <= 0):
            k, b = np.argwhere(sums.sel_w <= 0)[0]
            raise CatalogueError(
                f"{where}: sheared selection {SHEARED_SELECTIONS[k]} holds no galaxy in "
                f"bin {b + 1}; the selection response cannot be measured"
            )
        mean = sums.sel_we / sums.sel_w[..., None]  # [sel, bin, i]
        for j in range(2):
            selection[:, :, j] = (mean[2 * j] - mean[2 * j + 1]) / METACAL_DGAMMA
        response = response + selection
    if np.any(np.abs(np.linalg.det(response)) < 1e-6):
        raise CatalogueError(f"{where}: singular shear response {response.tolist()}")
    mean_e = sums.we / sums.w[:, None] if subtract_mean else np.zeros((nb, 2))
    m = np.zeros(nb) if m is None else np.asarray(m, dtype=np.float64)
    if m.shape != (nb,):
        raise CatalogueError(f"{where}: multiplicative bias has shape {m.shape}, expected ({nb},)")
    return ShearCalibration(response, selection, mean_e, m)


def apply_shear_calibration(
    cal: ShearCalibration, bins: np.ndarray, e1: np.ndarray, e2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated shear estimates ``g = R_b^-1 (e - c_b) / (1 + m_b)`` per galaxy."""
    inv = np.linalg.inv(cal.response) / (1.0 + cal.m)[:, None, None]
    # gathers from the per-bin tables, not an (n, 2, 2) copy of the matrices
    d1 = e1 - cal.mean_e[:, 0][bins]
    d2 = e2 - cal.mean_e[:, 1][bins]
    return (
        inv[:, 0, 0][bins] * d1 + inv[:, 0, 1][bins] * d2,
        inv[:, 1, 0][bins] * d1 + inv[:, 1, 1][bins] * d2,
    )
