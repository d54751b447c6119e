"""Patch geometry and the assignment of galaxies to patches and pixels.

:class:`PatchGrid` holds square gnomonic patches (``npix x npix`` grids indexed
``[row, col]``, row growing north and col growing west); :class:`PatchLookup` maps coarse
HEALPix cells to the patches that overlap them. The compiled kernels find each galaxy's
candidate patches through the lookup and project it into each, for
:func:`assign_to_patches` and for the galaxy-patch records that
:func:`kappadiff.catalogue.pixelise.pixelise_catalogue` sums. The kernels that call one
another live in this one module, so that numba's cache of a kernel is rebuilt whenever a
kernel it inlines changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import healpy as hp
import numba
import numpy as np

__all__ = [
    "RECORD_BYTES",
    "PatchGrid",
    "PatchLookup",
    "assign_to_patches",
    "first_containing_patch",
    "patch_lookup",
]


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
