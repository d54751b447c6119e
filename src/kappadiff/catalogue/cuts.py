"""Galaxy chunks, input checks, duplicate rows and quality cuts, with their accounting.

A catalogue is consumed as an iterable of :class:`GalaxyChunk`, so that memory never grows
with the number of galaxies. This module holds what is decided about each galaxy before it
is calibrated or projected: checks of the input (:func:`check_radians`), 64-bit row hashes
that count duplicate rows (:func:`row_hashes`, :func:`count_repeats`), the hash of a
catalogue's content that identifies it (:class:`HashedChunks`), the quality cuts
(:func:`quality_cuts`, :func:`quality_cut_chunks`, with :class:`BinErrors` for bin values
that are errors) and the galaxy :class:`Accounting`.

Accounting: every galaxy read is either used (it falls in at least one patch) or rejected
for exactly one reason, the first of :data:`REJECTION_REASONS` that applies, so that
``read == used + sum(rejected)`` holds exactly (:meth:`Accounting.reconcile`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numba
import numpy as np

from ..errors import KappadiffInputError

__all__ = [
    "REJECTION_REASONS",
    "Accounting",
    "BinErrors",
    "CatalogueError",
    "GalaxyChunk",
    "HashedChunks",
    "catalogue_extent",
    "check_radians",
    "count_repeats",
    "quality_cut_chunks",
    "quality_cuts",
    "row_hashes",
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


class HashedChunks:
    """A catalogue's chunks, hashing their columns on the first pass (``digest``).

    The hash (BLAKE2b of ra, dec, e1, e2, weight and bin in file order) identifies the
    catalogue's content at no extra read: the pixelisation reads every chunk anyway.
    """

    def __init__(self, chunks: Callable[[], Iterable[GalaxyChunk]]) -> None:
        self.chunks = chunks
        self.digest: str | None = None

    def __call__(self) -> Iterator[GalaxyChunk]:
        h = hashlib.blake2b(digest_size=8) if self.digest is None else None
        for chunk in self.chunks():
            if h is not None:
                for column in (chunk.ra, chunk.dec, chunk.e1, chunk.e2, chunk.weight, chunk.bin):
                    h.update(np.ascontiguousarray(column))
            yield chunk
        if h is not None:
            self.digest = h.hexdigest()


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
