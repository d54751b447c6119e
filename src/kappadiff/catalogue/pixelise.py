"""Pixelisation of a catalogue onto patches: per-pixel mean shear, noise, mask and counts.

:func:`pixelise_catalogue` reads a catalogue (an iterable of
:class:`~kappadiff.catalogue.cuts.GalaxyChunk`), applies the quality cuts, the shear
calibration (or a :data:`ShapeModel` such as a mock's), projects each galaxy into its
patches (:mod:`kappadiff.catalogue.assignment`) and sums the galaxy-patch records, either
buffered for the whole catalogue or in the dense :class:`ShearAccumulator` of one patch
group at a time (:func:`patch_groups`, :func:`record_budget`).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numba
import numpy as np

from .assignment import PatchGrid, _frames, _records_kernel, patch_lookup
from .cuts import Accounting, GalaxyChunk, count_repeats, quality_cut_chunks, row_hashes
from .responses import ShearCalibration, apply_shear_calibration

__all__ = [
    "ACCUMULATOR_BYTES",
    "ShapeModel",
    "ShearAccumulator",
    "patch_groups",
    "pixelise_catalogue",
    "record_budget",
]

#: Bytes of accumulator per patch pixel per bin (four float64 sums and the count, float64).
ACCUMULATOR_BYTES = 5 * 8

#: ``shapes(ordinal, chunk, rows, g1, g2) -> (g1, g2)``: see :func:`pixelise_catalogue`.
ShapeModel = Callable[
    [int, GalaxyChunk, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]
]


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

    def add(self, starts: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        """Add galaxy-patch records sorted by slot, slot s to patch s (:func:`_add_records`)."""
        _, nb, n, _ = self.shape
        _add_records(self.sums, starts, index, values, nb * n * n, self.noise == "shapes")

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


def _dec_band(grid: PatchGrid) -> tuple[float, float]:
    """Dec range (degrees) that holds every patch of ``grid``.

    A patch lies inside the cap of angular radius ``atan(sqrt(2) tan-plane half side)``
    about its centre (its corners are the farthest points), widened by a relative 1e-6
    against rounding.
    """
    half = np.radians(0.5 * grid.npix * grid.pixel_scale_arcmin / 60.0)
    radius = math.degrees(math.atan(math.sqrt(2.0) * half)) * (1.0 + 1e-6)
    return float(grid.dec0.min()) - radius, float(grid.dec0.max()) + radius


def _is_identity(cal: ShearCalibration) -> bool:
    """Whether ``apply_shear_calibration(cal, ...)`` returns the ellipticities exactly."""
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
    calibration: ShearCalibration | None = None,
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
    cal = ShearCalibration.identity(n_bins) if calibration is None else calibration
    if n_bins * grid.npix * grid.npix >= 2**31:
        raise ValueError(f"{where}: {n_bins} bins of {grid.npix}^2 pixels overflow int32 indices")
    groups = patch_groups(len(grid), n_bins, grid.npix, memory_mb)
    budget = record_budget(len(grid), n_bins, grid.npix, memory_mb)
    project = _Projection(grid, lookup_nside, cal, shapes)

    def cut_chunks() -> Iterator[tuple[GalaxyChunk, np.ndarray, dict[str, int]]]:
        return quality_cut_chunks(chunks(), n_bins, e_max, where)

    acct, records, acc = _first_pass(cut_chunks(), project, groups[0], budget, n_bins, noise, where)
    if records is not None:
        # the whole catalogue is buffered: every patch from its records
        yield from _patches_from_records(records, acct, grid, n_bins, noise, sigma_e, observed)
        return
    for gi, group in enumerate(groups):
        if gi > 0:
            _dense_pass(cut_chunks(), project, group, acc)
        for k, p in enumerate(group):
            obs = None if observed is None else observed[p]
            yield int(p), acc.maps(k, sigma_e, obs), acct


class _Records(NamedTuple):
    """A chunk's galaxy-patch records, sorted by slot (:func:`_records_kernel`)."""

    used: int  # galaxies in at least one projected patch
    outside: int  # galaxies that passed the cuts and lie in no projected patch
    assigned: int  # (galaxy, patch) pairs inside
    hit_rows: np.ndarray  # chunk rows of the galaxies in a projected patch
    starts: np.ndarray
    index: np.ndarray
    values: np.ndarray


class _Projection:
    """The galaxies of a chunk projected into the patches of ``grid`` (:func:`_records_kernel`).

    Holds the kernel's inputs, its workspace (reused from chunk to chunk) and what replaces
    the ellipticities first: the shear calibration, then the shape model, if any.
    """

    def __init__(
        self,
        grid: PatchGrid,
        lookup_nside: int | None,
        calibration: ShearCalibration,
        shapes: ShapeModel | None,
    ) -> None:
        lookup = patch_lookup(grid, lookup_nside)
        self.grid = grid
        self.frames = _frames(grid)
        self.scale = float(np.radians(grid.pixel_scale_arcmin / 60.0))
        self.nside = lookup.nside
        # the lookup as int32 (half the cache footprint of its random reads), and the workspace
        # of unsorted records, 1.5 a galaxy to start with (1.43 on the paper-scale layout)
        self.offsets = lookup.offsets.astype(np.int32)
        self.patches = lookup.patches.astype(np.int32)
        self.work = (np.empty(0, np.int32),) * 3
        self.calibration = calibration
        self.identity = _is_identity(calibration)
        self.shapes = shapes

    def shears(
        self, ordinal: int, chunk: GalaxyChunk, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bins (int64) and shears (calibrated, or the shape model's) of the chunk's ``rows``."""
        e1 = np.asarray(chunk.e1, dtype=np.float64)
        e2 = np.asarray(chunk.e2, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # NaN bins (rejected rows) cast to junk
            bins = np.asarray(chunk.bin).astype(np.int64)
        if not self.identity:
            # calibrated once a galaxy (rows only: other rows may have no valid bin)
            g1, g2 = np.zeros(len(chunk)), np.zeros(len(chunk))
            g1[rows], g2[rows] = apply_shear_calibration(
                self.calibration, bins[rows], e1[rows], e2[rows]
            )
            e1, e2 = g1, g2
        if self.shapes is not None:
            e1, e2 = self.shapes(ordinal, chunk, rows, e1, e2)
        return bins, e1, e2

    def __call__(
        self,
        ordinal: int,
        chunk: GalaxyChunk,
        keep: np.ndarray,
        slot: np.ndarray,
        n_slots: int,
        every_patch: bool,
    ) -> _Records:
        """Records of the galaxies ``keep`` of the chunk at ``ordinal`` into patch slots."""
        rows = np.flatnonzero(keep)
        bins, e1, e2 = self.shears(ordinal, chunk, rows)
        if self.work[0].size < 1.5 * rows.size:
            self.work = tuple(np.empty(int(1.5 * rows.size) + 1024, np.int32) for _ in range(3))
        ra = np.asarray(chunk.ra, dtype=np.float64)
        dec = np.asarray(chunk.dec, dtype=np.float64)
        hits = np.empty(rows.size, np.bool_)
        used, assigned, starts, index, values, *self.work = _records_kernel(
            rows,
            ra,
            dec,
            bins,
            np.asarray(chunk.weight, dtype=np.float64),
            e1,
            e2,
            self.frames,
            self.grid.npix,
            self.scale,
            self.nside,
            self.offsets,
            self.patches,
            slot,
            n_slots,
            every_patch,
            hits,
            *self.work,
        )
        return _Records(used, rows.size - used, assigned, rows[hits], starts, index, values)


def _slots(n_patch: int, group: np.ndarray) -> np.ndarray:
    """Patch index -> position in the group's accumulator (-1: another group)."""
    slot = np.full(n_patch, -1, dtype=np.int64)
    slot[group] = np.arange(len(group))
    return slot


def _first_pass(
    cut_chunks: Iterable[tuple[GalaxyChunk, np.ndarray, dict[str, int]]],
    project: _Projection,
    group: np.ndarray,
    budget: int,
    n_bins: int,
    noise: str,
    where: str,
) -> tuple[Accounting, list[tuple[np.ndarray, ...]] | None, ShearAccumulator | None]:
    """Assign every galaxy to every patch: the accounting, and the sums of the first group.

    Returns the reconciled :class:`Accounting`, and either the records of the whole
    catalogue (while they take at most ``budget`` bytes; the accumulator is then None) or
    None and the dense :class:`ShearAccumulator` of the patches ``group``, the first of
    :func:`patch_groups`.
    """
    n_patch = len(project.grid)
    slot, n_slots = np.arange(n_patch, dtype=np.int64), n_patch
    acct = Accounting()
    records: list[tuple[np.ndarray, ...]] | None = []
    hashes: list[np.ndarray] = []  # of the used galaxies (row_hashes), for the duplicates
    held = 0
    acc = None
    for ordinal, (chunk, keep, counts) in enumerate(cut_chunks):
        acct.read += len(chunk)
        for reason, k in counts.items():
            acct.rejected[reason] += k
        rec = project(ordinal, chunk, keep, slot, n_slots, every_patch=True)
        acct.used += rec.used
        acct.rejected["outside"] += rec.outside
        acct.assignments += rec.assigned
        hashes.append(row_hashes(chunk.ra, chunk.dec, chunk.e1, chunk.e2, rec.hit_rows))
        if records is None:
            acc.add(rec.starts, rec.index, rec.values)
            continue
        records.append((rec.starts, rec.index, rec.values))
        held += rec.index.nbytes + rec.values.nbytes
        if held > budget:
            # too many records: the first group goes dense, in galaxy order
            acc = ShearAccumulator(len(group), n_bins, project.grid.npix, noise)
            for starts, index, values in records:
                acc.add(starts[: len(group) + 1], index, values)
            records = None
            slot, n_slots = _slots(n_patch, group), len(group)
    every = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    del hashes
    acct.duplicates = count_repeats(every)
    del every
    acct.reconcile(where)
    return acct, records, acc


def _dense_pass(
    cut_chunks: Iterable[tuple[GalaxyChunk, np.ndarray, dict[str, int]]],
    project: _Projection,
    group: np.ndarray,
    acc: ShearAccumulator,
) -> None:
    """Sum the galaxies of the patches ``group`` into ``acc`` (a pass after the first)."""
    acc.clear()
    slot = _slots(len(project.grid), group)
    band = _dec_band(project.grid.subset(group))
    for ordinal, (chunk, keep, _) in enumerate(cut_chunks):
        # galaxies outside the group's Dec band are in none of its patches, so they skip
        # the projection
        keep &= chunk.dec >= band[0]
        keep &= chunk.dec <= band[1]
        rec = project(ordinal, chunk, keep, slot, len(group), every_patch=False)
        acc.add(rec.starts, rec.index, rec.values)


def _patches_from_records(
    records: list[tuple[np.ndarray, ...]],
    acct: Accounting,
    grid: PatchGrid,
    n_bins: int,
    noise: str,
    sigma_e: Sequence[float] | None,
    observed: np.ndarray | None,
) -> Iterator[tuple[int, dict[str, np.ndarray], Accounting]]:
    """Every patch's maps from the records of the whole catalogue, in one scratch accumulator."""
    scratch = ShearAccumulator(1, n_bins, grid.npix, noise)
    for p in range(len(grid)):
        for s, ix, va in records:
            scratch.add(s[p : p + 2] - s[p], ix[s[p] : s[p + 1]], va[s[p] : s[p + 1]])
        obs = None if observed is None else observed[p]
        yield p, scratch.maps(0, sigma_e, obs, clear=True), acct
