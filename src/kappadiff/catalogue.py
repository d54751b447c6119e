"""Shear catalogues: quality cuts, metacalibration response, mock catalogues, pixelisation.

Pure functions on arrays and chunks of galaxies; readers and writers of catalogue files live
in :mod:`kappadiff.catalogue_io`. A catalogue is consumed as an iterable of
:class:`GalaxyChunk`, so that memory never grows with the number of galaxies.

Conventions (docs/architecture.md): RA/Dec in degrees; catalogue ellipticities follow DES,
``(e1, e2) = (gamma1, -gamma2)`` of healpy's spin-2 shear maps; patches are gnomonic
``npix x npix`` grids indexed ``[row, col]`` with row growing north and col growing west.

Accounting: every galaxy read is either used (it falls in at least one patch) or rejected
for exactly one reason, the first of :data:`REJECTION_REASONS` that applies, so that
``read == used + sum(rejected)`` holds exactly (:meth:`Accounting.reconcile`).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import healpy as hp
import numba
import numpy as np

from .errors import KappadiffInputError

__all__ = [
    "REJECTION_REASONS",
    "SHEARED_SELECTIONS",
    "Accounting",
    "BinErrors",
    "Calibration",
    "CatalogueError",
    "GalaxyChunk",
    "PatchGrid",
    "PatchLookup",
    "ResponseSums",
    "ShapeModel",
    "ShapeNoiseMock",
    "ShearAccumulator",
    "apply_calibration",
    "assign_to_patches",
    "calibration_from_sums",
    "catalogue_extent",
    "check_radians",
    "count_repeats",
    "first_containing_patch",
    "mock_positions",
    "mock_shapes",
    "occupancy_mask",
    "patch_groups",
    "patch_lookup",
    "pixelise_catalogue",
    "quality_cut_chunks",
    "quality_cuts",
    "record_budget",
    "row_hashes",
    "shear_at_positions",
]

#: Reasons a galaxy is not used, in the order they are tested (a galaxy counts once).
REJECTION_REASONS = ("nonfinite", "bin", "weight", "ellipticity", "outside")
#: FITS header keyword of each rejection count.
_REJECT_KEYS = {
    "nonfinite": "REJNAN",
    "bin": "REJBIN",
    "weight": "REJWGT",
    "ellipticity": "REJELL",
    "outside": "REJOUT",
}
#: Metacalibration sheared catalogues, in the order (component 1 +, 1 -, 2 +, 2 -).
SHEARED_SELECTIONS = ("1p", "1m", "2p", "2m")
#: Applied shear of the metacalibration sheared catalogues (Sheldon & Huff 2017): +-0.01.
METACAL_DGAMMA = 0.02
#: Bytes of accumulator per patch pixel per bin (four float64 sums and the count, float64).
ACCUMULATOR_BYTES = 5 * 8


class CatalogueError(KappadiffInputError):
    """Bad catalogue input; the message names the file (or catalogue), column and count."""


@dataclass(frozen=True)
class GalaxyChunk:
    """A block of galaxies, all arrays of shape (n,).

    Attributes
    ----------
    ra, dec
        Position in degrees.
    e1, e2
        Measured ellipticity, DES convention.
    weight
        Shear weight (> 0 to be used).
    bin
        Tomographic bin, 0-based; -1 means no bin (rejected).
    response
        Optional per-galaxy shear response, shape (n, 2, 2) (metacalibration R_gamma) or
        (n,) (a scalar response); None where the catalogue has none.
    """

    ra: np.ndarray
    dec: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    weight: np.ndarray
    bin: np.ndarray
    response: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ra)

    def subset(self, keep: np.ndarray) -> GalaxyChunk:
        """The galaxies where ``keep`` (bool or index array) selects."""
        return GalaxyChunk(
            self.ra[keep],
            self.dec[keep],
            self.e1[keep],
            self.e2[keep],
            self.weight[keep],
            self.bin[keep],
            None if self.response is None else self.response[keep],
        )


@dataclass
class Accounting:
    """Galaxy counts: read = used + rejected (by reason); assignments to patches.

    ``assignments`` counts (galaxy, patch) pairs: a galaxy in the overlap of several
    patches is used once and assigned several times. ``duplicates`` counts the used
    galaxies that repeat an earlier used row (same ra, dec, e1, e2); they are among the
    used, so ``0 <= duplicates < used`` (or both 0).
    """

    read: int = 0
    used: int = 0
    assignments: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    duplicates: int = 0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def reconcile(self, where: str = "catalogue") -> None:
        """Raise :class:`CatalogueError` unless ``read == used + sum(rejected)`` and the
        duplicates are a part of the used galaxies."""
        if self.read != self.used + self.n_rejected:
            raise CatalogueError(
                f"{where}: galaxy accounting does not reconcile: read {self.read} != "
                f"used {self.used} + rejected {self.n_rejected} ({self.rejected})"
            )
        if not 0 <= self.duplicates <= max(self.used - 1, 0):
            raise CatalogueError(
                f"{where}: galaxy accounting does not reconcile: {self.duplicates} duplicates "
                f"among {self.used} galaxies used"
            )

    def header(self) -> dict[str, int]:
        """FITS cards: NREAD, NUSED, NASSIGN, one REJxxx count per reason, and NDUP."""
        cards = {"NREAD": self.read, "NUSED": self.used, "NASSIGN": self.assignments}
        for reason in REJECTION_REASONS:
            cards[_REJECT_KEYS[reason]] = self.rejected[reason]
        cards["NDUP"] = self.duplicates
        return cards

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.rejected.items())
        return (
            f"read {self.read} = used {self.used} + rejected {self.n_rejected} ({parts}); "
            f"{self.assignments} galaxy-patch assignments; {self.duplicates} of the used "
            "repeat an earlier row"
        )


# --------------------------------------------------------------------------- input checks


def check_radians(ra: np.ndarray, dec: np.ndarray, where: str, min_rows: int = 100) -> None:
    """Raise if RA/Dec look like radians (all within [0, 2 pi] x [-pi/2, pi/2]).

    Applied to the first chunk of a catalogue; a catalogue in degrees fails only if all of
    its first ``min_rows`` or more galaxies lie within 6.3 deg of RA 0 and 1.6 deg of the
    equator, which no survey footprint does.
    """
    ok = np.isfinite(ra) & np.isfinite(dec)
    ra, dec = ra[ok], dec[ok]
    if ra.size < min_rows:
        return
    if np.all((ra >= -2 * np.pi) & (ra <= 2 * np.pi)) and np.all(np.abs(dec) <= 0.5 * np.pi):
        raise CatalogueError(
            f"{where}: RA/Dec look like radians ({ra.size} galaxies all within "
            f"|RA| <= 2 pi, |Dec| <= pi/2); give degrees (FITS catalogues: "
            "catalogue.fits.radec_units: rad converts them)"
        )


def catalogue_extent(chunks: Iterable[GalaxyChunk]) -> tuple[int, float, float, float, float]:
    """Galaxies with finite positions and their range: ``(n, ra_min, ra_max, dec_min, dec_max)``.

    Degrees as read (NaN ranges when ``n = 0``); for messages about where a catalogue lies.
    """
    n, lo, hi = 0, np.full(2, np.inf), np.full(2, -np.inf)
    for chunk in chunks:
        ok = np.isfinite(chunk.ra) & np.isfinite(chunk.dec)
        if ok.any():
            pos = np.stack([chunk.ra[ok], chunk.dec[ok]])
            lo, hi = np.minimum(lo, pos.min(axis=1)), np.maximum(hi, pos.max(axis=1))
            n += int(ok.sum())
    if n == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    return n, float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


#: Bit pattern of -0.0, hashed as 0.0 (the two are equal values).
_NEG_ZERO = np.uint64(0x8000000000000000)


@numba.njit(cache=True, nogil=True, inline="always")
def _splitmix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mix."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _hash_kernel(rows, ra, dec, e1, e2):
    """:func:`row_hashes` of ``rows``, from the columns' float64 bits (uint64 views)."""
    out = np.empty(rows.size, np.uint64)
    zero = np.uint64(0)
    for k in range(rows.size):
        i = rows[k]
        h = _splitmix64(zero if ra[i] == _NEG_ZERO else ra[i])
        h = _splitmix64(h ^ (zero if dec[i] == _NEG_ZERO else dec[i]))
        h = _splitmix64(h ^ (zero if e1[i] == _NEG_ZERO else e1[i]))
        out[k] = _splitmix64(h ^ (zero if e2[i] == _NEG_ZERO else e2[i]))
    return out


def row_hashes(
    ra: np.ndarray,
    dec: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """64-bit hash of each galaxy's (ra, dec, e1, e2), equal for equal values.

    Of the rows ``rows`` (all if None). -0.0 and 0.0 hash alike. Two different galaxies of
    a catalogue of n share a hash with probability about n^2 / 2^65 (3e-4 for 10^8).
    """
    cols = [np.ascontiguousarray(c, dtype=np.float64).view(np.uint64) for c in (ra, dec, e1, e2)]
    rows = np.arange(cols[0].size) if rows is None else np.asarray(rows, dtype=np.int64)
    return _hash_kernel(rows, *cols)


#: Mean number of hashes a bucket of :func:`count_repeats` holds (its table stays in cache).
_REPEAT_BUCKET = 16384


@numba.njit(cache=True, nogil=True)
def _repeats_kernel(h, bits):
    """:func:`count_repeats` with ``2**bits`` buckets (``bits >= 1``) by the top bits."""
    nb = 1 << bits
    shift = np.uint64(64 - bits)
    counts = np.zeros(nb + 1, np.int64)
    for x in h:
        counts[(x >> shift) + 1] += 1
    starts = np.cumsum(counts)
    at = starts[:-1].copy()
    buf = np.empty(h.size, np.uint64)
    for x in h:
        k = x >> shift
        buf[at[k]] = x
        at[k] += 1
    cap = 2
    while cap < 2 * np.max(counts):
        cap *= 2
    table = np.zeros(cap, np.uint64)  # open addressing, 0 = empty slot
    mask = np.uint64(cap - 1)
    repeats = zeros = 0
    for k in range(nb):
        table[:] = 0
        for j in range(starts[k], starts[k + 1]):
            x = buf[j]
            if x == 0:
                zeros += 1
                continue
            i = x & mask
            while table[i] != 0 and table[i] != x:
                i = (i + np.uint64(1)) & mask
            repeats += table[i] == x
            table[i] = x
    return repeats + max(zeros - 1, 0)


def count_repeats(hashes: np.ndarray) -> int:
    """Number of values that repeat an earlier one.

    The values are spread into buckets by their top bits (one counting scatter), and each
    bucket goes through a hash table small enough for the cache: about 10 ns a value,
    against ~120 ns for ``np.sort`` and a comparison of neighbours. Memory: a copy.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    bits = max(1, math.ceil(math.log2(max(hashes.size, 1) / _REPEAT_BUCKET)))
    return int(_repeats_kernel(hashes, bits))


@numba.njit(cache=True, nogil=True)
def _cuts_kernel(ra, dec, e1, e2, w, bins, finite, n_bins, e_max, keep):
    """:func:`quality_cuts` in one sweep: fills ``keep``, returns the counts by reason and
    the number of finite rows whose bin is outside ``[-1, n_bins - 1]`` or not an integer.

    ``finite`` is False where a column tested outside (float bins, responses) is not finite.
    """
    n_nonfinite = n_bin = n_weight = n_ell = n_bad = 0
    e2max = e_max * e_max
    for i in range(ra.size):
        keep[i] = False
        ok = (
            finite[i]
            and math.isfinite(ra[i])
            and math.isfinite(dec[i])
            and math.isfinite(e1[i])
            and math.isfinite(e2[i])
            and math.isfinite(w[i])
        )
        if not ok:
            n_nonfinite += 1
            continue
        b = bins[i]
        if b < -1 or b >= n_bins or b != math.floor(b):
            n_bad += 1
            continue
        if b < 0:
            n_bin += 1
        elif not w[i] > 0:
            n_weight += 1
        elif not e1[i] * e1[i] + e2[i] * e2[i] < e2max:
            n_ell += 1
        else:
            keep[i] = True
    return n_nonfinite, n_bin, n_weight, n_ell, n_bad


@dataclass
class BinErrors:
    """Tomographic bin values that are errors, counted over a whole catalogue.

    A bin must be an integer in ``[-1, n_bins - 1]`` (integral floats such as 2.0 pass);
    :func:`quality_cut_chunks` counts the others chunk by chunk and raises once the
    catalogue is read, so that the error gives the catalogue's count, not a chunk's.
    """

    n_bins: int
    column: str = "bin"
    rows: int = 0
    outside: int = 0
    fractional: int = 0
    examples: dict[str, np.ndarray] = field(
        default_factory=lambda: {"outside": np.empty(0), "fractional": np.empty(0)}
    )

    def add(self, values: np.ndarray) -> None:
        """Count bad bin ``values`` (finite values that fail the test) and keep examples."""
        values = np.asarray(values, dtype=np.float64)
        fractional = values != np.floor(values)
        for kind, sel in (("outside", ~fractional), ("fractional", fractional)):
            setattr(self, kind, getattr(self, kind) + int(sel.sum()))
            self.examples[kind] = np.unique(np.r_[self.examples[kind], values[sel]])[:5]

    def check(self, where: str) -> None:
        """Raise :class:`CatalogueError` naming the counts, if any value was bad."""
        parts = []
        if self.outside:
            parts.append(
                f"{self.outside} values outside -1..{self.n_bins - 1} "
                f"(e.g. {self._examples('outside')})"
            )
        if self.fractional:
            parts.append(
                f"{self.fractional} values that are not integers "
                f"(e.g. {self._examples('fractional')})"
            )
        if parts:
            raise CatalogueError(
                f"{where}: column '{self.column}' has {' and '.join(parts)} "
                f"in {self.rows} rows read; tomographic bins are integers 0..{self.n_bins - 1}, "
                "-1 for none"
            )

    def _examples(self, kind: str) -> list[float | int]:
        return [int(v) if v == int(v) else float(v) for v in self.examples[kind]]


def _cut_chunk(
    chunk: GalaxyChunk, n_bins: int, e_max: float, bad: BinErrors
) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`quality_cuts` of one chunk, its bad bin values added to ``bad``."""
    bins = np.asarray(chunk.bin)
    # float bins and responses can be non-finite too: tested here, the rest in the kernel
    finite = np.ones(len(chunk), dtype=np.bool_)
    if bins.dtype.kind == "f":
        finite &= np.isfinite(bins)
    if chunk.response is not None:
        r = chunk.response.reshape(len(chunk), -1)
        finite &= np.isfinite(r).all(axis=1)
    keep = np.empty(len(chunk), dtype=np.bool_)
    columns = [np.asarray(getattr(chunk, k)) for k in ("ra", "dec", "e1", "e2", "weight")]
    *rejected, n_bad = _cuts_kernel(*columns, bins, finite, n_bins, float(e_max), keep)
    bad.rows += len(chunk)
    if n_bad:
        # the rows the kernel tested and found bad (rare: the error path)
        tested = finite & np.logical_and.reduce([np.isfinite(c) for c in columns])
        with np.errstate(invalid="ignore"):
            wrong = (bins < -1) | (bins >= n_bins) | (bins != np.floor(bins))
        bad.add(bins[tested & wrong])
    counts = dict(zip(("nonfinite", "bin", "weight", "ellipticity"), rejected, strict=True))
    return keep, counts


def quality_cut_chunks(
    chunks: Iterable[GalaxyChunk], n_bins: int, e_max: float, where: str = "catalogue"
) -> Iterator[tuple[GalaxyChunk, np.ndarray, dict[str, int]]]:
    """Each chunk of a catalogue with its :func:`quality_cuts` ``(keep, counts)``.

    Bin values that are not integers in ``[-1, n_bins - 1]`` are never kept; they are
    counted over the whole catalogue and raised (:class:`CatalogueError`, with the counts
    and examples) after its last chunk.
    """
    bad = BinErrors(n_bins)
    for chunk in chunks:
        keep, counts = _cut_chunk(chunk, n_bins, e_max, bad)
        yield chunk, keep, counts
    bad.check(where)


def quality_cuts(
    chunk: GalaxyChunk, n_bins: int, e_max: float, where: str = "catalogue"
) -> tuple[np.ndarray, dict[str, int]]:
    """Galaxies that pass the quality cuts, and rejection counts by reason.

    Parameters
    ----------
    chunk
        Galaxies to test.
    n_bins
        Number of tomographic bins; bins must be integers in ``[-1, n_bins - 1]``.
    e_max
        Galaxies with ``|e| = sqrt(e1^2 + e2^2) >= e_max`` are rejected (``e_max <= 1``).
    where
        Name of the catalogue, for error messages.

    Returns
    -------
    keep : ndarray, bool, shape (n,)
    counts : dict
        Galaxies rejected for each reason in :data:`REJECTION_REASONS` except "outside"
        (tested in the order nonfinite, bin = -1, weight <= 0, |e| >= e_max; a galaxy
        counts under the first reason only).

    Raises
    ------
    CatalogueError
        Bins outside ``[-1, n_bins - 1]`` or not integers (named with their count).
    """
    ((_, keep, counts),) = quality_cut_chunks([chunk], n_bins, e_max, where)
    return keep, counts


# --------------------------------------------------------------------------- calibration


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
class Calibration:
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
    def identity(cls, n_bins: int, m: Sequence[float] | None = None) -> Calibration:
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


def calibration_from_sums(
    sums: ResponseSums,
    m: Sequence[float] | None = None,
    subtract_mean: bool = False,
    where: str = "catalogue",
) -> Calibration:
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
    return Calibration(response, selection, mean_e, m)


def apply_calibration(
    cal: Calibration, bins: np.ndarray, e1: np.ndarray, e2: np.ndarray
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


# --------------------------------------------------------------------------- patch geometry


@dataclass(frozen=True)
class PatchGrid:
    """Square gnomonic patches: centres and pixel geometry.

    Attributes
    ----------
    ra0, dec0 : (n_patch,)
        Patch centres, degrees.
    npix
        Pixels on a side.
    pixel_scale_arcmin
        Pixel side at the centre, arcmin.
    """

    ra0: np.ndarray
    dec0: np.ndarray
    npix: int
    pixel_scale_arcmin: float

    def __post_init__(self) -> None:
        ra0 = np.atleast_1d(np.asarray(self.ra0, dtype=np.float64))
        dec0 = np.atleast_1d(np.asarray(self.dec0, dtype=np.float64))
        if ra0.shape != dec0.shape or ra0.ndim != 1:
            raise ValueError(f"PatchGrid: ra0 {ra0.shape} and dec0 {dec0.shape} differ")
        object.__setattr__(self, "ra0", ra0)
        object.__setattr__(self, "dec0", dec0)
        a, d = np.radians(ra0), np.radians(dec0)
        ca, sa, cd, sd = np.cos(a), np.sin(a), np.cos(d), np.sin(d)
        frames = np.array(
            [[cd * ca, cd * sa, sd], [-sa, ca, np.zeros_like(a)], [-sd * ca, -sd * sa, cd]]
        )
        object.__setattr__(self, "frames", frames)

    #: Unit vectors (centre, east, north) of each tangent plane, [3 (vector), 3 (xyz), n_patch].
    frames: np.ndarray = field(init=False, repr=False)

    def __len__(self) -> int:
        return len(self.ra0)

    def subset(self, index: np.ndarray) -> PatchGrid:
        return PatchGrid(self.ra0[index], self.dec0[index], self.npix, self.pixel_scale_arcmin)

    def corners(self, margin: float = 0.0) -> np.ndarray:
        """Unit vectors of the four corners of each patch, [n_patch, 4, 3].

        The patch edges are great circles (the gnomonic projection maps great circles to
        straight lines), so the patch is the spherical polygon with these corners.
        ``margin`` enlarges the half side by this fraction.
        """
        half = np.radians(0.5 * self.npix * self.pixel_scale_arcmin / 60.0) * (1.0 + margin)
        f = self.frames.transpose(2, 0, 1)[:, None]  # [patch, 1, vector, xyz]
        signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) * half
        v = f[..., 0, :] + signs[None, :, :1] * f[..., 1, :] + signs[None, :, 1:] * f[..., 2, :]
        return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass(frozen=True)
class PatchLookup:
    """Coarse HEALPix cell -> candidate patches, in CSR form.

    ``patches[offsets[c]:offsets[c + 1]]`` are the patches (increasing) whose square
    overlaps cell ``c`` (RING, resolution ``nside``).
    """

    nside: int
    offsets: np.ndarray
    patches: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Number of candidate patches of each cell."""
        return np.diff(self.offsets)


def _lookup_nside(grid: PatchGrid) -> int:
    """Coarsest nside whose cells are at most 1/8 of the patch side (few spare candidates).

    On the paper-scale layout, 1/8 gives 2.0 candidates a galaxy for 1.43 assignments
    (1/4: 2.5) and the fastest assignment; finer cells cost more in table lookups.
    """
    side = grid.npix * grid.pixel_scale_arcmin
    nside = 1
    while hp.nside2resol(nside, arcmin=True) > side / 8 and nside < 8192:
        nside *= 2
    return nside


def patch_lookup(grid: PatchGrid, nside: int | None = None) -> PatchLookup:
    """Build the cell -> patch lookup used to find candidate patches of each galaxy.

    Each patch lists every cell that overlaps its spherical square
    (``healpy.query_polygon(inclusive=True)``, which may add a few cells beyond), so a
    galaxy's patches are always among its cell's candidates.
    """
    nside = _lookup_nside(grid) if nside is None else int(nside)
    corners = grid.corners(margin=1e-6)
    cells, owners = [], []
    for p in range(len(grid)):
        c = hp.query_polygon(nside, corners[p], inclusive=True)
        cells.append(c)
        owners.append(np.full(c.size, p, dtype=np.int64))
    cells = np.concatenate(cells) if cells else np.empty(0, np.int64)
    owners = np.concatenate(owners) if owners else np.empty(0, np.int64)
    order = np.lexsort((owners, cells))
    counts = np.bincount(cells, minlength=hp.nside2npix(nside))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return PatchLookup(nside, offsets, owners[order])


# The compiled kernels below are the one implementation of candidate lookup, projection and
# accumulation. Their float64 arithmetic is spelled out operation by operation (no fastmath,
# so no reassociation or fused multiply-adds): the pixel of a galaxy is exactly the one
# sphere.sky_to_pixel gives, and the HEALPix cell healpy's (up to rounding, see _ring_cell).

#: np.radians(x) is x * (pi / 180) in float64.
_DEG = math.pi / 180.0
_TWOTHIRD = 2.0 / 3.0


@numba.njit(cache=True, nogil=True)
def _ring_cell(nside: int, ra: float, z: float, sth: float) -> int:
    """HEALPix RING cell of a direction: RA (degrees), ``z = sin(dec)``, ``sth = cos(dec)``.

    healpix_cxx's loc2pix (what healpy.vec2pix calls), fed with the RA instead of
    ``atan2(y, x)`` of the unit vector, which saves the arctangent and the normalisation.
    The two can differ only for a direction within rounding of a cell boundary, where
    either cell lists every patch that contains it (:func:`patch_lookup` is inclusive).
    """
    tt = (ra / 90.0) % 4.0  # in [0, 4)
    if tt >= 4.0:  # -tiny % 4 rounds to 4
        tt = 0.0
    za = abs(z)
    if za <= _TWOTHIRD:  # equatorial region
        nl4 = 4 * nside
        temp1 = nside * (0.5 + tt)
        temp2 = nside * z * 0.75
        jp = int(temp1 - temp2)  # ascending edge line
        jm = int(temp1 + temp2)  # descending edge line
        ir = nside + 1 + jp - jm  # ring counted from z = 2/3
        kshift = 1 - (ir & 1)
        t1 = jp + jm - nside + kshift + 1 + nl4 + nl4
        ip = (t1 >> 1) % nl4
        return 2 * nside * (nside - 1) + (ir - 1) * nl4 + ip
    tp = tt - int(tt)  # polar caps
    if za < 0.99:
        tmp = nside * math.sqrt(3.0 * (1.0 - za))
    else:
        tmp = nside * sth / math.sqrt((1.0 + za) / 3.0)
    jp = int(tp * tmp)
    jm = int((1.0 - tp) * tmp)
    ir = jp + jm + 1  # ring counted from the closest pole
    ip = int(tt * ir)
    if ip >= 4 * ir:  # tt within rounding of 4
        ip = 4 * ir - 1
    if z > 0:
        return 2 * ir * (ir - 1) + ip
    return 12 * nside * nside - 2 * ir * (ir + 1) + ip


@numba.njit(cache=True, nogil=True, inline="always")
def _direction(ra: float, dec: float, nside: int) -> tuple[float, float, float, int]:
    """Unit vector of (RA, Dec) in degrees (as np.radians, np.cos, np.sin) and its cell."""
    a = ra * _DEG
    d = dec * _DEG
    cd = math.cos(d)
    z = math.sin(d)
    return math.cos(a) * cd, math.sin(a) * cd, z, _ring_cell(nside, ra, z, cd)


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _pixel(
    f: np.ndarray, p: int, vx: float, vy: float, vz: float, npix: int, scale: float
) -> tuple[bool, int, int]:
    """Whether patch ``p`` (frame row ``f[p]``) contains the direction, and its (row, col).

    ``f[p]`` holds the (centre, east, north) vectors; ``scale`` is the pixel side in
    radians. floor(v + 1/2) rounds to the nearest pixel centre. (row, col) are (0, 0)
    outside. Branch-free: whether a candidate patch holds the galaxy is a coin toss to the
    branch predictor, and a mispredicted branch costs more than the arithmetic it skips.
    """
    along = vx * f[p, 0] + vy * f[p, 1] + vz * f[p, 2]
    x = vx * f[p, 3] + vy * f[p, 4]  # the east vector has no z component
    y = vx * f[p, 6] + vy * f[p, 7] + vz * f[p, 8]
    inv = 1.0 / (along * scale)  # inf or NaN where along <= 0, which the test below fails
    c = 0.5 * (npix - 1) + 0.5
    col = math.floor(c - x * inv)
    row = math.floor(c + y * inv)
    # along > 0 and 0 <= v < npix (NaN and infinities fail)
    ok = (along > 0.0) & (0.0 <= col) & (col < npix) & (0.0 <= row) & (row < npix)
    return ok, int(row) if ok else 0, int(col) if ok else 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _assign_kernel(ra, dec, f, npix, scale, nside, offsets, patches):
    """Pairs (galaxy, patch, row, col) of :func:`assign_to_patches`, int64 arrays."""
    n = ra.size
    vec = np.empty((n, 3))
    cell = np.empty(n, np.int64)
    total = 0
    for i in range(n):
        vx, vy, vz, c = _direction(ra[i], dec[i], nside)
        vec[i, 0], vec[i, 1], vec[i, 2] = vx, vy, vz
        cell[i] = c
        total += offsets[c + 1] - offsets[c]
    out = np.empty((4, total), np.int64)
    m = 0
    for i in range(n):
        c = cell[i]
        for k in range(offsets[c], offsets[c + 1]):
            p = patches[k]
            ok, row, col = _pixel(f, p, vec[i, 0], vec[i, 1], vec[i, 2], npix, scale)
            if ok:
                out[0, m], out[1, m], out[2, m], out[3, m] = i, p, row, col
                m += 1
    return out[:, :m]


#: Galaxies whose directions :func:`_records_kernel` computes before their projections.
_BATCH = 256
#: Bytes a buffered galaxy-patch record takes: int32 pixel index, float32 w, g1, g2.
RECORD_BYTES = 4 + 3 * 4


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _records_kernel(
    rows,
    ra,
    dec,
    bins,
    w,
    g1,
    g2,
    f,
    npix,
    scale,
    nside,
    offsets,
    patches,
    slot,
    n_slots,
    every_patch,
    hits,
    t_slot,
    t_pix,
    t_gal,
):
    """Galaxy-patch records of the galaxies ``rows``, sorted by slot.

    Each galaxy is projected into its candidate patches (all of them if ``every_patch``,
    else only those with ``slot >= 0``); each inside assignment with ``slot[p] >= 0`` gives a
    record: the pixel index ``(bin * npix + row) * npix + col`` within its patch and the
    galaxy's (w, g1, g2) as float32 (the products are float32, so this rounding is of their
    own size). Records are sorted by slot by a stable counting sort, so within a slot they
    stay in galaxy order (sums are then added in the same order whatever the grouping).
    ``hits`` (bool, one a row of ``rows``) is set where the galaxy is in a projected patch.
    ``t_slot``, ``t_pix``, ``t_gal`` (int32, equal sizes) are the unsorted records'
    workspace, reused from chunk to chunk (grown here when a chunk needs more).

    Returns
    -------
    used, assigned : int
        Galaxies in at least one projected patch; (galaxy, patch) pairs inside.
    starts : int64 (n_slots + 1,)
        Records of slot s are ``[starts[s], starts[s + 1])``.
    index : int32 (m,), values : float32 (m, 3)
        Pixel index and (w, g1, g2) of each record.
    t_slot, t_pix, t_gal
        The workspace (grown, or as given).
    """
    cap = t_slot.size
    counts = np.zeros(n_slots + 1, np.int64)
    vec = np.empty((_BATCH, 3))
    lo = np.empty(_BATCH, np.int64)
    hi = np.empty(_BATCH, np.int64)
    m = 0
    used = 0
    assigned = 0
    for start in range(0, rows.size, _BATCH):
        nb = min(_BATCH, rows.size - start)
        # directions and candidate ranges of a batch first: the lookup reads (cache misses
        # on a random-order catalogue) are then independent and overlap
        most = 0
        for j in range(nb):
            i = rows[start + j]
            vec[j, 0], vec[j, 1], vec[j, 2], c = _direction(ra[i], dec[i], nside)
            lo[j] = offsets[c]
            hi[j] = offsets[c + 1]
            most += hi[j] - lo[j]
        if m + most > cap:
            cap = 2 * cap + most
            t_slot = _grown(t_slot, cap)
            t_pix = _grown(t_pix, cap)
            t_gal = _grown(t_gal, cap)
        for j in range(nb):
            i = rows[start + j]
            hit = False
            for k in range(lo[j], hi[j]):
                p = patches[k]
                s = slot[p]
                ok, row, col = _pixel(f, p, vec[j, 0], vec[j, 1], vec[j, 2], npix, scale)
                ok &= (s >= 0) | every_patch
                hit |= ok
                assigned += ok
                # written whatever the outcome, kept (m advanced) only if inside and in a slot
                keep = ok & (s >= 0)
                t_slot[m] = s
                t_pix[m] = (bins[i] * npix + row) * npix + col
                t_gal[m] = i
                counts[s + 1] += keep
                m += keep
            hits[start + j] = hit
            used += hit
    starts = np.cumsum(counts)
    at = starts[:-1].copy()
    index = np.empty(m, np.int32)
    values = np.empty((m, 3), np.float32)
    for k in range(m):
        q = at[t_slot[k]]
        at[t_slot[k]] = q + 1
        i = t_gal[k]
        index[q] = t_pix[k]
        values[q, 0] = w[i]
        values[q, 1] = g1[i]
        values[q, 2] = g2[i]
    return used, assigned, starts, index, values, t_slot, t_pix, t_gal


@numba.njit(cache=True, nogil=True)
def _grown(a, cap):
    """A copy of ``a`` with room for ``cap`` elements."""
    out = np.empty(cap, a.dtype)
    out[: a.size] = a
    return out


@numba.njit(cache=True, nogil=True)
def _add_records(sums, starts, index, values, size, shape_noise):
    """Add records to per-pixel sums (see :class:`ShearAccumulator`).

    The records of slot s (``starts[s]:starts[s + 1]``) add (w, w g1, w g2, noise, 1) to
    the 5-float64 record of pixel ``s * size + index`` (``size`` = pixels of a patch, all
    bins); the noise term is ``w^2 (g1^2 + g2^2) / 2`` (shapes) or ``w^2`` (sigma_e).
    """
    for s in range(starts.size - 1):
        base = s * size
        for k in range(starts[s], starts[s + 1]):
            a = (base + index[k]) * 5
            wi = np.float64(values[k, 0])
            e1 = np.float64(values[k, 1])
            e2 = np.float64(values[k, 2])
            sums[a] += wi
            sums[a + 1] += wi * e1
            sums[a + 2] += wi * e2
            if shape_noise:
                sums[a + 3] += (e1 * e1 + e2 * e2) * wi * wi * 0.5
            else:
                sums[a + 3] += wi * wi
            sums[a + 4] += 1.0


def _frames(grid: PatchGrid) -> np.ndarray:
    """Patch frames as the kernels read them, [n_patch, 9]: (centre, east, north) xyz."""
    return np.ascontiguousarray(grid.frames.transpose(2, 0, 1).reshape(len(grid), 9))


def assign_to_patches(
    ra: np.ndarray, dec: np.ndarray, grid: PatchGrid, lookup: PatchLookup
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (galaxy, patch) pair whose patch square contains the galaxy, with its pixel.

    Candidate patches come from the coarse lookup (not a loop over patches); each pair is
    projected gnomonically with the patch's (centre, east, north) frame,
    ``x = (v.east)/(v.centre)``, ``y = (v.north)/(v.centre)`` (radians on the tangent plane),
    and lands in pixel ``col = round((n-1)/2 - x/s)``, ``row = round((n-1)/2 + y/s)``
    (:func:`kappadiff.sphere.sky_to_pixel` computes the same coordinates one patch at a time).

    Parameters
    ----------
    ra, dec : (n,)
        Galaxy positions, degrees.
    grid, lookup
        The patches and their lookup (:func:`patch_lookup`).

    Returns
    -------
    galaxy, patch, row, col : ndarray, int64, shape (n_pairs,)
        Galaxy index (non-decreasing), patch index, pixel row and column.
    """
    ra = np.ascontiguousarray(ra, dtype=np.float64)
    dec = np.ascontiguousarray(dec, dtype=np.float64)
    scale = float(np.radians(grid.pixel_scale_arcmin / 60.0))
    galaxy, patch, row, col = _assign_kernel(
        ra, dec, _frames(grid), grid.npix, scale, lookup.nside, lookup.offsets, lookup.patches
    )
    return galaxy, patch, row, col


def first_containing_patch(
    ra: np.ndarray, dec: np.ndarray, grid: PatchGrid, lookup: PatchLookup
) -> np.ndarray:
    """Index of the lowest-numbered patch containing each position, -1 where none does."""
    galaxy, patch, _, _ = assign_to_patches(ra, dec, grid, lookup)
    out = np.full(len(ra), -1, dtype=np.int64)
    # pairs are ordered by galaxy, then by increasing patch within a galaxy's cell
    starts = np.flatnonzero(np.r_[True, galaxy[1:] != galaxy[:-1]]) if galaxy.size else galaxy
    out[galaxy[starts]] = patch[starts]
    return out


# --------------------------------------------------------------------------- pixelisation


def _zeros(size: int, dtype: type) -> np.ndarray:
    """A zeroed array in its own anonymous memory map (freed with the array).

    numpy advises the kernel to back large arrays with huge pages; the first touch of a
    huge page zeroes 2 MiB at once, which on the benchmark machine made faulting in a
    scatter-added accumulator cost ~2 s/GiB against ~0.5 s/GiB with ordinary pages.
    """
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(size, dtype=dtype)
    # populated at once (Linux): ~0.4 s/GiB against ~0.65 s/GiB faulted page by page
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=dtype)


class ShearAccumulator:
    """Per-pixel weighted sums of a set of patches, ``[patch, bin, row, col]`` flattened.

    Holds sum w, sum w g1, sum w g2, the noise sum (sum w^2 (g1^2 + g2^2)/2 for
    ``noise="shapes"``, sum w^2 for ``noise="sigma_e"``) and the galaxy count (as float64,
    exact below 2^53), interleaved as five consecutive float64 per pixel and bin, so that an
    assignment updates one 40-byte record (one or two cache lines) rather than five arrays.
    :func:`pixelise_catalogue` fills it with its compiled kernel.
    """

    def __init__(self, n_patch: int, n_bins: int, npix: int, noise: str = "shapes") -> None:
        if noise not in ("shapes", "sigma_e"):
            raise ValueError(f"ShearAccumulator: noise = {noise!r}, not 'shapes' or 'sigma_e'")
        self.shape = (n_patch, n_bins, npix, npix)
        self.noise = noise
        self.sums = _zeros(n_patch * n_bins * npix * npix * 5, np.float64)

    w = property(lambda self: self.sums[0::5], doc="Sum of weights, flattened.")
    wg1 = property(lambda self: self.sums[1::5], doc="Sum of w g1, flattened.")
    wg2 = property(lambda self: self.sums[2::5], doc="Sum of w g2, flattened.")
    noise_sum = property(lambda self: self.sums[3::5], doc="Noise sum, flattened.")
    count = property(lambda self: self.sums[4::5], doc="Galaxy count (float64), flattened.")

    def clear(self) -> None:
        """Zero every sum, keeping the memory (reused by the next patch group)."""
        self.sums.fill(0)

    def maps(
        self,
        index: int,
        sigma_e: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        clear: bool = False,
    ) -> dict[str, np.ndarray]:
        """Shear maps of patch ``index``: G1, G2, SIGMA, MASK, NGAL, each [bin, row, col].

        ``G = sum w g / sum w``; ``SIGMA^2 = sum w^2 (g1^2 + g2^2)/2 / (sum w)^2`` (shapes)
        or ``sigma_e^2 sum w^2 / (sum w)^2`` (sigma_e, i.e. sigma_e^2 / N_eff of the pixel);
        MASK = 1 where the pixel holds galaxies (and is ``observed``, a [row, col] bool
        footprint test), else 0, and G1, G2, SIGMA are 0 there.

        With ``clear``, the patch's sums are zeroed as they are read (a scratch accumulator
        reused patch after patch).
        """
        _, nb, n, _ = self.shape
        if self.noise == "sigma_e" and sigma_e is None:
            raise ValueError("ShearAccumulator.maps: noise='sigma_e' needs sigma_e per bin")
        # sigma_e enters only the sigma_e noise model; shape noise is measured from the shapes
        if self.noise == "shapes":
            scale = np.ones(nb)
        else:
            scale = np.asarray(sigma_e, dtype=np.float64)
        if observed is None:
            observed = np.ones((n, n), dtype=bool)
        observed = np.ascontiguousarray(observed, dtype=np.bool_).ravel()
        size = nb * n * n * 5
        rec = self.sums[index * size : (index + 1) * size]
        out = {
            "G1": np.empty((nb, n, n), np.float32),
            "G2": np.empty((nb, n, n), np.float32),
            "SIGMA": np.empty((nb, n, n), np.float32),
            "MASK": np.empty((nb, n, n), np.uint8),
            "NGAL": np.empty((nb, n, n), np.int32),
        }
        flat = [out[k].reshape(-1) for k in ("G1", "G2", "SIGMA", "MASK", "NGAL")]
        _maps_kernel(rec, observed, scale, clear, *flat)
        return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _maps_kernel(rec, observed, sigma_e, clear, g1, g2, sigma, mask, ngal):
    """:meth:`ShearAccumulator.maps` of one patch's sums ``rec`` (flat [bin, pixel, 5]).

    ``sigma_e`` (per bin) multiplies SIGMA (ones for the shape noise). With ``clear``, the
    sums are zeroed as they are read (a scratch accumulator reused patch after patch: one
    sweep over it rather than two, and only the cache lines of pixels with galaxies are
    written).
    """
    npix2 = observed.size
    for b in range(sigma_e.size):
        se = sigma_e[b]
        for q in range(npix2):
            k = b * npix2 + q
            a = 5 * k
            w, count = rec[a], rec[a + 4]
            used = count > 0 and w > 0 and observed[q]
            ngal[k] = np.int32(count)
            mask[k] = used
            # computed everywhere and selected (no branch on the random pattern of empty
            # pixels); 1 / 0 is inf and not selected
            inv = 1.0 / w
            g1[k] = rec[a + 1] * inv if used else 0.0
            g2[k] = rec[a + 2] * inv if used else 0.0
            sigma[k] = math.sqrt(rec[a + 3]) * inv * se if used else 0.0
            if clear and count > 0:  # only pixels with galaxies have non-zero sums
                for j in range(5):
                    rec[a + j] = 0.0


def _dec_band(grid: PatchGrid) -> tuple[float, float]:
    """Dec range (degrees) that holds every patch of ``grid``.

    A patch lies inside the cap of angular radius ``atan(sqrt(2) tan-plane half side)``
    about its centre (its corners are the farthest points), widened by a relative 1e-6
    against rounding.
    """
    half = np.radians(0.5 * grid.npix * grid.pixel_scale_arcmin / 60.0)
    radius = math.degrees(math.atan(math.sqrt(2.0) * half)) * (1.0 + 1e-6)
    return float(grid.dec0.min()) - radius, float(grid.dec0.max()) + radius


def _is_identity(cal: Calibration) -> bool:
    """Whether ``apply_calibration(cal, ...)`` returns the ellipticities unchanged (exactly)."""
    inv = np.linalg.inv(cal.response) / (1.0 + cal.m)[:, None, None]
    return bool(np.all(inv == np.eye(2)) and not np.any(cal.mean_e))


def patch_groups(n_patch: int, n_bins: int, npix: int, memory_mb: float) -> list[np.ndarray]:
    """Split patch indices into groups whose accumulators fit in ``memory_mb``.

    Each group costs :data:`ACCUMULATOR_BYTES` per pixel per bin; the catalogue is read
    once per group, so the default keeps the whole layout in one group where it fits.
    Groups are consecutive index ranges, the first starting at 0.
    """
    per_patch = ACCUMULATOR_BYTES * n_bins * npix * npix
    size = max(1, int(memory_mb * 2**20 // per_patch))
    return [np.arange(s, min(s + size, n_patch)) for s in range(0, n_patch, size)]


def record_budget(n_patch: int, n_bins: int, npix: int, memory_mb: float) -> int:
    """Bytes of galaxy-patch records :func:`pixelise_catalogue` buffers before it turns dense.

    The smaller of ``memory_mb`` and the accumulator of the whole layout: records are kept
    only while they take less memory than the dense sums would.
    """
    dense = ACCUMULATOR_BYTES * n_bins * npix * npix * n_patch
    return int(min(memory_mb * 2**20, dense))


def pixelise_catalogue(
    chunks: Callable[[], Iterable[GalaxyChunk]],
    grid: PatchGrid,
    n_bins: int,
    *,
    e_max: float = 1.0,
    calibration: Calibration | None = None,
    noise: str = "shapes",
    sigma_e: Sequence[float] | None = None,
    observed: np.ndarray | None = None,
    memory_mb: float = 1024.0,
    lookup_nside: int | None = None,
    where: str = "catalogue",
    shapes: ShapeModel | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray], Accounting]]:
    """Pixelise a catalogue onto patches: per-pixel mean shear, noise, mask and counts.

    Parameters
    ----------
    chunks
        Called once per pass, returns the catalogue as an iterable of
        :class:`GalaxyChunk` (in the same order every time).
    grid
        The patches.
    n_bins
        Number of tomographic bins (the leading axis of every map).
    e_max
        Ellipticity bound of :func:`quality_cuts`.
    calibration
        Applied to the ellipticities of the galaxies kept (identity if None).
    noise, sigma_e
        Per-pixel noise from the shapes (``"shapes"``) or ``sigma_e`` per bin
        (``"sigma_e"``); see :meth:`ShearAccumulator.maps`.
    observed : (n_patch, npix, npix) bool, optional
        False where a pixel centre lies outside the survey footprint (masked).
    memory_mb
        Budget of the buffered galaxy-patch records (:data:`RECORD_BYTES` each) and of the
        dense accumulators (:data:`ACCUMULATOR_BYTES` a pixel a bin); see Notes.
    lookup_nside
        Resolution of the candidate-patch lookup (None: 1/8 of a patch side).
    where
        Catalogue name for messages.
    shapes
        Replaces the calibrated shears of the galaxies kept, after the quality cuts (so the
        selection, weights, mask and counts are the catalogue's own): called as
        ``shapes(ordinal, chunk, rows, g1, g2)`` with the chunk's position in the catalogue,
        e.g. a :class:`ShapeNoiseMock`.

    Yields
    ------
    index, maps, accounting
        Patch index in ``grid``, its maps (:meth:`ShearAccumulator.maps`), and the
        catalogue's accounting, complete (and reconciled) before the first patch is yielded.

    Notes
    -----
    The first pass assigns every galaxy to every patch, which makes the accounting (a galaxy
    is "outside" only if it lies in no patch of the layout) final after one pass. Its
    galaxy-patch records (pixel index and float32 w, g1, g2: 16 bytes, against 40 bytes a
    pixel and bin for the dense sums) are buffered, sorted by patch, while they take less
    than :func:`record_budget`; if the whole catalogue fits, every patch is summed from
    them in turn in one reused scratch accumulator (a catalogue sparse on the layout, e.g.
    10^7 galaxies on 411 patches of 256^2 1' pixels, is read and projected once and no
    layout-sized array is ever zeroed). Otherwise the records of the first group of
    :func:`patch_groups` are added to its dense accumulator, the others dropped, and the
    pass goes on dense; each further group then reads the galaxies of its Dec band again.
    Sums are added in galaxy order on either path, so the maps do not depend on the path.
    Peak memory: at most the record budget plus one group's accumulator (at the switch),
    plus 8 bytes a used galaxy (16 while they are counted) for the 64-bit hashes of
    (ra, dec, e1, e2) that count the duplicate rows (:attr:`Accounting.duplicates`; a
    duplicate is used as often as it appears, the caller decides whether that is an error).
    """
    cal = Calibration.identity(n_bins) if calibration is None else calibration
    identity = _is_identity(cal)
    n_patch = len(grid)
    npix2 = grid.npix * grid.npix
    if n_bins * npix2 >= 2**31:
        raise ValueError(f"{where}: {n_bins} bins of {grid.npix}^2 pixels overflow int32 indices")
    groups = patch_groups(n_patch, n_bins, grid.npix, memory_mb)
    budget = record_budget(n_patch, n_bins, grid.npix, memory_mb)
    lookup = patch_lookup(grid, lookup_nside)
    frames = _frames(grid)
    scale = float(np.radians(grid.pixel_scale_arcmin / 60.0))
    shape_noise = noise == "shapes"
    size = n_bins * npix2
    # the lookup as int32 (half the cache footprint of its random reads), and the workspace
    # of unsorted records, 1.5 a galaxy to start with (1.43 on the paper-scale layout)
    offsets = lookup.offsets.astype(np.int32)
    patches = lookup.patches.astype(np.int32)
    work = (np.empty(0, np.int32),) * 3
    acct = Accounting()
    records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = []
    hashes: list[np.ndarray] = []  # of the used galaxies (row_hashes), for the duplicates
    held = 0
    acc = None

    def to_slot(group: np.ndarray) -> np.ndarray:
        # patch index -> position in the group's accumulator (-1: another group)
        slot = np.full(n_patch, -1, dtype=np.int64)
        slot[group] = np.arange(len(group))
        return slot

    for gi, group in enumerate(groups):
        first_pass = gi == 0
        if first_pass:
            slot, n_slots, band = np.arange(n_patch, dtype=np.int64), n_patch, None
        else:
            acc.clear()
            slot, n_slots = to_slot(group), len(group)
            band = _dec_band(grid.subset(group))
        for ordinal, (chunk, keep, counts) in enumerate(
            quality_cut_chunks(chunks(), n_bins, e_max, where)
        ):
            if band is not None:
                # later passes: galaxies outside the group's Dec band are in none of its
                # patches, so they skip the projection
                keep &= chunk.dec >= band[0]
                keep &= chunk.dec <= band[1]
            if first_pass:
                acct.read += len(chunk)
                for reason, k in counts.items():
                    acct.rejected[reason] += k
            rows = np.flatnonzero(keep)
            e1 = np.asarray(chunk.e1, dtype=np.float64)
            e2 = np.asarray(chunk.e2, dtype=np.float64)
            with np.errstate(invalid="ignore"):  # NaN bins (rejected rows) cast to junk
                bins = np.asarray(chunk.bin).astype(np.int64)
            if not identity:
                # calibrated once a galaxy (rows only: other rows may have no valid bin)
                g1, g2 = np.zeros(len(chunk)), np.zeros(len(chunk))
                g1[rows], g2[rows] = apply_calibration(cal, bins[rows], e1[rows], e2[rows])
                e1, e2 = g1, g2
            if shapes is not None:
                e1, e2 = shapes(ordinal, chunk, rows, e1, e2)
            if work[0].size < 1.5 * rows.size:
                work = tuple(np.empty(int(1.5 * rows.size) + 1024, np.int32) for _ in range(3))
            ra = np.asarray(chunk.ra, dtype=np.float64)
            dec = np.asarray(chunk.dec, dtype=np.float64)
            hits = np.empty(rows.size, np.bool_)
            used, assigned, starts, index, values, *work = _records_kernel(
                rows,
                ra,
                dec,
                bins,
                np.asarray(chunk.weight, dtype=np.float64),
                e1,
                e2,
                frames,
                grid.npix,
                scale,
                lookup.nside,
                offsets,
                patches,
                slot,
                n_slots,
                first_pass,
                hits,
                *work,
            )
            if first_pass:
                acct.used += used
                acct.rejected["outside"] += rows.size - used
                acct.assignments += assigned
                hashes.append(row_hashes(ra, dec, chunk.e1, chunk.e2, rows[hits]))
            if records is None:
                _add_records(acc.sums, starts, index, values, size, shape_noise)
                continue
            records.append((starts, index, values))
            held += index.nbytes + values.nbytes
            if held > budget:
                # too many records: the first group goes dense, in galaxy order
                acc = ShearAccumulator(len(group := groups[0]), n_bins, grid.npix, noise)
                for st, ix, va in records:
                    _add_records(acc.sums, st[: len(group) + 1], ix, va, size, shape_noise)
                records = None
                slot, n_slots = to_slot(group), len(group)
        if first_pass:
            every = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
            del hashes
            acct.duplicates = count_repeats(every)
            del every
            acct.reconcile(where)
        if records is not None:
            # the whole catalogue is buffered: every patch from its records
            scratch = ShearAccumulator(1, n_bins, grid.npix, noise)
            for p in range(n_patch):
                st = [
                    (s[p : p + 2] - s[p], ix[s[p] : s[p + 1]], va[s[p] : s[p + 1]])
                    for s, ix, va in records
                ]
                for s, ix, va in st:
                    _add_records(scratch.sums, s, ix, va, size, shape_noise)
                obs = None if observed is None else observed[p]
                yield p, scratch.maps(0, sigma_e, obs, clear=True), acct
            return
        for k, p in enumerate(group):
            obs = None if observed is None else observed[p]
            yield int(p), acc.maps(k, sigma_e, obs), acct


# --------------------------------------------------------------------------- mock catalogues


def mock_positions(
    rng: np.random.Generator,
    grid: PatchGrid,
    patch: int,
    density_arcmin2: float,
    lookup: PatchLookup,
    footprint: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson positions of galaxies that patch ``patch`` owns.

    Points are drawn uniformly in the spherical cap circumscribing the patch (Poisson
    number at ``density_arcmin2`` times the cap area) and kept where the patch is the
    lowest-numbered patch of ``grid`` containing them, so that drawing every patch in turn
    gives one Poisson process of that density over the union of the patches, without
    double counting the overlaps. With ``footprint`` (a HEALPix RING bool map) the points
    outside it are dropped too.

    Returns
    -------
    ra, dec : ndarray, shape (n,)
        Degrees.
    """
    half = np.radians(0.5 * grid.npix * grid.pixel_scale_arcmin / 60.0)
    radius = math.atan(math.sqrt(2.0) * half) * (1.0 + 1e-6)
    area_arcmin2 = 2 * np.pi * (1 - math.cos(radius)) * (180 * 60 / np.pi) ** 2
    n = rng.poisson(density_arcmin2 * area_arcmin2)
    # uniform in the cap about the pole, rotated onto the patch centre's frame
    z = rng.uniform(math.cos(radius), 1.0, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(1 - z * z)
    f = grid.frames[:, :, patch]
    v = z[:, None] * f[0] + (s * np.cos(phi))[:, None] * f[1] + (s * np.sin(phi))[:, None] * f[2]
    ra = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(v[:, 2], -1, 1)))
    keep = first_containing_patch(ra, dec, grid, lookup) == patch
    if footprint is not None:
        nside = hp.npix2nside(len(footprint))
        keep &= np.asarray(footprint, dtype=bool)[hp.ang2pix(nside, ra, dec, lonlat=True)]
    return ra[keep], dec[keep]


def shear_at_positions(
    ra: np.ndarray,
    dec: np.ndarray,
    bins: np.ndarray,
    gamma1: np.ndarray,
    gamma2: np.ndarray,
    kappa: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DES-convention shear of each galaxy from HEALPix maps of its bin.

    Parameters
    ----------
    ra, dec, bins : (n,)
        Positions (degrees) and bins (0-based).
    gamma1, gamma2 : (n_bins, npix_hp)
        healpy spin-2 shear maps (GLASS sign), e.g. from
        :func:`kappadiff.sims.shear_from_kappa`.
    kappa : (n_bins, npix_hp), optional
        Convergence; when given the reduced shear ``g = gamma / (1 - kappa)`` is returned.

    Returns
    -------
    e1, e2 : ndarray, shape (n,)
        ``(g1, -g2)``: DES sign convention (docs/architecture.md), bilinearly interpolated.
    """
    theta = np.radians(90.0 - dec)
    phi = np.radians(ra)
    e1 = np.empty(len(ra))
    e2 = np.empty(len(ra))
    for b in range(len(gamma1)):
        sel = bins == b
        if not sel.any():
            continue
        g1 = hp.get_interp_val(gamma1[b], theta[sel], phi[sel])
        g2 = hp.get_interp_val(gamma2[b], theta[sel], phi[sel])
        if kappa is not None:
            k = hp.get_interp_val(kappa[b], theta[sel], phi[sel])
            g1, g2 = g1 / (1 - k), g2 / (1 - k)
        e1[sel], e2[sel] = g1, -g2
    return e1, e2


def mock_shapes(
    rng: np.random.Generator,
    g1: np.ndarray,
    g2: np.ndarray,
    bins: np.ndarray,
    sigma_e: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Observed ellipticities: shear plus Gaussian shape noise ``sigma_e[bin]`` per component.

    The weak-shear limit ``e = g + e_int`` (the intrinsic ellipticity is not sheared
    multiplicatively); galaxies pushed to ``|e| >= 1`` stay in the catalogue and are counted
    by the ellipticity cut.
    """
    s = np.asarray(sigma_e, dtype=np.float64)[bins]
    return g1 + s * rng.standard_normal(len(g1)), g2 + s * rng.standard_normal(len(g2))


#: ``shapes(ordinal, chunk, rows, g1, g2) -> (g1, g2)``: see :func:`pixelise_catalogue`.
ShapeModel = Callable[
    [int, GalaxyChunk, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class ShapeNoiseMock:
    """A mock of a real catalogue: its own shape noise, rotated, plus a simulated shear.

    Each galaxy keeps its position, weight, bin and response; its calibrated ellipticity
    ``g`` is rotated by an independent uniform angle (``g -> g e^{2 i phi}``), which keeps
    the exact distribution of the shape noise and removes the cosmic shear, and the true
    shear of the simulated sky at the galaxy is added. A pixel's mean is then
    ``gamma_true + noise`` with the data's own mask, weights and noise level.

    Attributes
    ----------
    gamma1, gamma2 : (n_bins, npix_hp)
        healpy spin-2 shear maps of the simulated sky (GLASS sign), one per bin.
    kappa : (n_bins, npix_hp) or None
        Convergence, for the reduced shear ``gamma / (1 - kappa)``; None for ``gamma``.
    seed
        Seed of the rotation angles; the angles of a chunk depend only on the seed and the
        chunk's position, so every pass over the catalogue draws the same angles.
    """

    gamma1: np.ndarray
    gamma2: np.ndarray
    kappa: np.ndarray | None
    seed: int

    def __call__(
        self, ordinal: int, chunk: GalaxyChunk, rows: np.ndarray, g1: np.ndarray, g2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # one angle for every row of the chunk, so a row's angle does not depend on the cuts
        phi = np.random.default_rng([int(self.seed), int(ordinal)]).uniform(0, np.pi, len(chunk))
        c, s = np.cos(2 * phi[rows]), np.sin(2 * phi[rows])
        bins = np.asarray(chunk.bin)[rows].astype(np.int64)
        t1, t2 = shear_at_positions(
            np.asarray(chunk.ra)[rows],
            np.asarray(chunk.dec)[rows],
            bins,
            self.gamma1,
            self.gamma2,
            self.kappa,
        )
        out1, out2 = np.zeros(len(chunk)), np.zeros(len(chunk))
        out1[rows] = c * g1[rows] - s * g2[rows] + t1
        out2[rows] = s * g1[rows] + c * g2[rows] + t2
        return out1, out2


def occupancy_mask(nside: int, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Count of galaxies in each HEALPix (RING) pixel; ``> 0`` is the occupancy footprint."""
    return np.bincount(hp.ang2pix(nside, ra, dec, lonlat=True), minlength=hp.nside2npix(nside))
