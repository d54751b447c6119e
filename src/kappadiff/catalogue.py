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
import numpy as np

__all__ = [
    "REJECTION_REASONS",
    "SHEARED_SELECTIONS",
    "Accounting",
    "Calibration",
    "CatalogueError",
    "GalaxyChunk",
    "PatchGrid",
    "PatchLookup",
    "ResponseSums",
    "ShearAccumulator",
    "apply_calibration",
    "assign_to_patches",
    "calibration_from_sums",
    "check_radians",
    "first_containing_patch",
    "mock_positions",
    "mock_shapes",
    "occupancy_mask",
    "patch_groups",
    "patch_lookup",
    "pixelise_catalogue",
    "quality_cuts",
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
#: Bytes of accumulator per patch pixel per bin (four float64 sums and an int64 count).
ACCUMULATOR_BYTES = 5 * 8
#: Galaxies pixelised at a time (per-assignment temporaries of ~1 MB each).
_BLOCK = 1 << 16


class CatalogueError(ValueError):
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
    patches is used once and assigned several times.
    """

    read: int = 0
    used: int = 0
    assignments: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def reconcile(self, where: str = "catalogue") -> None:
        """Raise :class:`CatalogueError` unless ``read == used + sum(rejected)``."""
        if self.read != self.used + self.n_rejected:
            raise CatalogueError(
                f"{where}: galaxy accounting does not reconcile: read {self.read} != "
                f"used {self.used} + rejected {self.n_rejected} ({self.rejected})"
            )

    def header(self) -> dict[str, int]:
        """FITS cards: NREAD, NUSED, NASSIGN and one REJxxx count per reason."""
        cards = {"NREAD": self.read, "NUSED": self.used, "NASSIGN": self.assignments}
        for reason in REJECTION_REASONS:
            cards[_REJECT_KEYS[reason]] = self.rejected[reason]
        return cards

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.rejected.items())
        return (
            f"read {self.read} = used {self.used} + rejected {self.n_rejected} ({parts}); "
            f"{self.assignments} galaxy-patch assignments"
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


def quality_cuts(
    chunk: GalaxyChunk, n_bins: int, e_max: float, where: str = "catalogue"
) -> tuple[np.ndarray, dict[str, int]]:
    """Galaxies that pass the quality cuts, and rejection counts by reason.

    Parameters
    ----------
    chunk
        Galaxies to test.
    n_bins
        Number of tomographic bins; bins must be in ``[-1, n_bins - 1]``.
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
        Bins outside ``[-1, n_bins - 1]`` (named with their count).
    """
    finite = (
        np.isfinite(chunk.ra)
        & np.isfinite(chunk.dec)
        & np.isfinite(chunk.e1)
        & np.isfinite(chunk.e2)
        & np.isfinite(chunk.weight)
    )
    bins = np.asarray(chunk.bin)
    if bins.dtype.kind == "f":
        finite &= np.isfinite(bins)
    if chunk.response is not None:
        r = chunk.response.reshape(len(chunk), -1)
        finite &= np.isfinite(r).all(axis=1)
    bad = finite & ((bins < -1) | (bins >= n_bins))
    if bad.any():
        values = np.unique(bins[bad])[:5]
        raise CatalogueError(
            f"{where}: column 'bin' has {int(bad.sum())} values outside -1..{n_bins - 1} "
            f"(e.g. {values.tolist()})"
        )
    has_bin = finite & (bins >= 0)
    positive = has_bin & (chunk.weight > 0)
    with np.errstate(invalid="ignore"):
        small_e = chunk.e1**2 + chunk.e2**2 < e_max**2
    keep = positive & small_e
    counts = {
        "nonfinite": int((~finite).sum()),
        "bin": int((finite & ~has_bin).sum()),
        "weight": int((has_bin & ~positive).sum()),
        "ellipticity": int((positive & ~small_e).sum()),
    }
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


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, d = np.radians(ra), np.radians(dec)
    cd = np.cos(d)
    vx = np.cos(a)
    vx *= cd
    vy = np.sin(a, out=a)
    vy *= cd
    return vx, vy, np.sin(d, out=d)


def _pairs(
    ra: np.ndarray, dec: np.ndarray, grid: PatchGrid, lookup: PatchLookup
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inside (galaxy, patch) pairs: galaxy, patch, row and col as float64 (see below).

    The work of :func:`assign_to_patches`, with the pixel left in float64 so that the
    caller casts only what it needs. Temporaries are reused in place (``out=``): the
    arithmetic, and so every rounding, is that of the formulas in the docstring of
    :func:`assign_to_patches`.
    """
    n = len(ra)
    vx, vy, vz = _unit_vectors(ra, dec)
    cell = hp.vec2pix(lookup.nside, vx, vy, vz)
    count = lookup.counts[cell]
    ends = np.cumsum(count)
    total = int(ends[-1]) if n else 0
    galaxy = np.repeat(np.arange(n, dtype=np.int64), count)
    # index into lookup.patches: the cell's offset plus the position in its candidate list
    ends -= count
    start = np.subtract(lookup.offsets[cell], ends, out=ends)
    index = np.repeat(start, count)
    index += np.arange(total, dtype=np.int64)
    patch = lookup.patches[index]
    f = grid.frames
    tmp = np.empty(total)

    def dot(p: np.ndarray, t: np.ndarray, out: np.ndarray) -> np.ndarray:
        # out += p * t[patch], the product through the shared temporary
        np.take(t, patch, out=tmp)
        np.multiply(tmp, p, out=tmp)
        return np.add(out, tmp, out=out)

    px, py, pz = vx[galaxy], vy[galaxy], vz[galaxy]
    along = np.multiply(px, f[0, 0][patch])
    dot(py, f[0, 1], along)
    dot(pz, f[0, 2], along)
    x = np.multiply(px, f[1, 0][patch])  # the east vector has no z component
    dot(py, f[1, 1], x)
    y = np.multiply(px, f[2, 0][patch], out=px)
    dot(py, f[2, 1], y)
    dot(pz, f[2, 2], y)
    del px, py, pz
    c = 0.5 * (grid.npix - 1) + 0.5  # +0.5: floor() then rounds to the nearest centre
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.multiply(along, np.radians(grid.pixel_scale_arcmin / 60.0), out=tmp)
        np.divide(1.0, inv, out=inv)
        col = np.floor(np.subtract(c, np.multiply(x, inv, out=x), out=x), out=x)
        row = np.floor(np.add(c, np.multiply(y, inv, out=y), out=y), out=y)
        inside = along > 0
        # one test per coordinate: 0 <= v < npix <=> |v - (npix - 1)/2| < npix/2 (exact:
        # v is an integer, or NaN, which fails)
        half = 0.5 * (grid.npix - 1)
        dev = np.subtract(col, half, out=along)
        inside &= np.abs(dev, out=dev) < 0.5 * grid.npix
        np.subtract(row, half, out=dev)
        inside &= np.abs(dev, out=dev) < 0.5 * grid.npix
    keep = np.flatnonzero(inside)
    return galaxy[keep], patch[keep], row[keep], col[keep]


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
    galaxy, patch, row, col = _pairs(ra, dec, grid, lookup)
    return galaxy, patch, row.astype(np.int64), col.astype(np.int64)


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
    ``noise="shapes"``, sum w^2 for ``noise="sigma_e"``) and the galaxy count. The four
    float64 sums are stored as two complex128 arrays, (sum w, sum w g1) and
    (sum w g2, noise sum), so that one scatter-add updates two sums in the same cache line:
    three scatter-adds a galaxy-patch assignment instead of five.
    """

    def __init__(self, n_patch: int, n_bins: int, npix: int, noise: str = "shapes") -> None:
        if noise not in ("shapes", "sigma_e"):
            raise ValueError(f"ShearAccumulator: noise = {noise!r}, not 'shapes' or 'sigma_e'")
        self.shape = (n_patch, n_bins, npix, npix)
        self.noise = noise
        size = n_patch * n_bins * npix * npix
        self._w_wg1 = _zeros(size, np.complex128)
        self._wg2_noise = _zeros(size, np.complex128)
        self.count = _zeros(size, np.int64)
        self._scratch = None

    w = property(lambda self: self._w_wg1.real, doc="Sum of weights, flattened.")
    wg1 = property(lambda self: self._w_wg1.imag, doc="Sum of w g1, flattened.")
    wg2 = property(lambda self: self._wg2_noise.real, doc="Sum of w g2, flattened.")
    noise_sum = property(lambda self: self._wg2_noise.imag, doc="Noise sum, flattened.")

    def clear(self) -> None:
        """Zero every sum, keeping the memory (reused by the next patch group)."""
        self._w_wg1.fill(0)
        self._wg2_noise.fill(0)
        self.count.fill(0)

    def add(
        self,
        patch: np.ndarray,
        bins: np.ndarray,
        row: np.ndarray,
        col: np.ndarray,
        w: np.ndarray,
        g1: np.ndarray,
        g2: np.ndarray,
    ) -> None:
        """Add galaxy-patch assignments (all arrays of shape (n_pairs,))."""
        _, nb, n, _ = self.shape
        self.add_flat(((patch * nb + bins) * n + row) * n + col, w, g1, g2)

    def add_flat(self, flat: np.ndarray, w: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> None:
        """Add assignments by flat index ``((patch * n_bins + bin) * npix + row) * npix + col``."""
        a = np.empty(len(flat), dtype=np.complex128)
        b = np.empty(len(flat), dtype=np.complex128)
        a.real = w
        np.multiply(w, g1, out=a.imag)
        np.multiply(w, g2, out=b.real)
        if self.noise == "shapes":
            noise = b.imag
            np.multiply(g1, g1, out=noise)
            noise += g2 * g2
            noise *= w
            noise *= w
            noise *= 0.5
        else:
            np.multiply(w, w, out=b.imag)
        np.add.at(self._w_wg1, flat, a)
        np.add.at(self._wg2_noise, flat, b)
        np.add.at(self.count, flat, 1)

    def maps(
        self,
        index: int,
        sigma_e: np.ndarray | None = None,
        observed: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Shear maps of patch ``index``: G1, G2, SIGMA, MASK, NGAL, each [bin, row, col].

        ``G = sum w g / sum w``; ``SIGMA^2 = sum w^2 (g1^2 + g2^2)/2 / (sum w)^2`` (shapes)
        or ``sigma_e^2 sum w^2 / (sum w)^2`` (sigma_e, i.e. sigma_e^2 / N_eff of the pixel);
        MASK = 1 where the pixel holds galaxies (and is ``observed``, a [row, col] bool
        footprint test), else 0, and G1, G2, SIGMA are 0 there.
        """
        _, nb, n, _ = self.shape
        if self.noise == "sigma_e" and sigma_e is None:
            raise ValueError("ShearAccumulator.maps: noise='sigma_e' needs sigma_e per bin")
        sl = slice(index * nb * n * n, (index + 1) * nb * n * n)
        shape = (nb, n, n)
        a = self._w_wg1[sl].reshape(shape)
        b = self._wg2_noise[sl].reshape(shape)
        count = self.count[sl].reshape(shape)
        mask = count > 0
        mask &= a.real > 0
        if observed is not None:
            mask &= np.asarray(observed, dtype=bool)[None]
        # scratch kept between calls: fresh temporaries of this size cost their page faults
        if self._scratch is None or self._scratch.shape[1:] != shape:
            self._scratch = np.empty((2, *shape))
        inv, sigma = self._scratch
        # 1 / sum w where the pixel is used (w > 0), else 0 / (|w| + 1) = 0: masked pixels
        # come out as exact zeros
        np.abs(a.real, out=inv)
        np.add(inv, ~mask, out=inv)
        np.divide(mask, inv, out=inv)
        g1 = np.multiply(a.imag, inv, out=np.empty(shape, np.float32))
        g2 = np.multiply(b.real, inv, out=np.empty(shape, np.float32))
        np.sqrt(b.imag, out=sigma)
        sigma *= inv
        if self.noise == "sigma_e":
            sigma *= np.asarray(sigma_e, dtype=np.float64)[:, None, None]
        return {
            "G1": g1,
            "G2": g2,
            "SIGMA": sigma.astype(np.float32),
            "MASK": mask.view(np.uint8),
            "NGAL": count.astype(np.int32),
        }


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
    """
    per_patch = ACCUMULATOR_BYTES * n_bins * npix * npix
    size = max(1, int(memory_mb * 2**20 // per_patch))
    return [np.arange(s, min(s + size, n_patch)) for s in range(0, n_patch, size)]


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
        Accumulator budget; the patches are processed in groups that fit
        (:func:`patch_groups`), reading the catalogue once per group.
    lookup_nside
        Resolution of the candidate-patch lookup (None: 1/8 of a patch side).
    where
        Catalogue name for messages.

    Yields
    ------
    index, maps, accounting
        Patch index in ``grid``, its maps (:meth:`ShearAccumulator.maps`), and the
        catalogue's accounting, complete (and reconciled) before the first patch is yielded.

    Notes
    -----
    The first pass assigns every galaxy to all patches, which makes the accounting (a
    galaxy is "outside" only if it lies in no patch of the layout) final after one pass;
    later passes, one per further group, look up only their group's patches.
    """
    cal = Calibration.identity(n_bins) if calibration is None else calibration
    identity = _is_identity(cal)
    groups = patch_groups(len(grid), n_bins, grid.npix, memory_mb)
    full_lookup = patch_lookup(grid, lookup_nside)
    npix = grid.npix
    acct = Accounting()
    # one accumulator, zeroed between groups: its pages are faulted in once per run
    acc = ShearAccumulator(len(groups[0]), n_bins, npix, noise)
    for gi, group in enumerate(groups):
        first_pass = gi == 0
        if not first_pass:
            acc.clear()
        sub = grid if first_pass else grid.subset(group)
        lookup = full_lookup if first_pass else patch_lookup(sub, full_lookup.nside)
        # patch index of `sub` -> position in this group's accumulator (-1: other group)
        local = np.full(len(sub), -1, dtype=np.int64)
        if first_pass:
            local[group] = np.arange(len(group))
        else:
            local[:] = np.arange(len(group))
        select = first_pass and len(groups) > 1
        band = None if first_pass else _dec_band(sub)
        for chunk in chunks():
            keep, counts = quality_cuts(chunk, n_bins, e_max, where)
            if band is not None:
                # later passes: galaxies outside the group's Dec band are in none of its
                # patches, so they skip the projection
                keep &= chunk.dec >= band[0]
                keep &= chunk.dec <= band[1]
            if first_pass:
                acct.read += len(chunk)
                for reason, k in counts.items():
                    acct.rejected[reason] += k
            good = np.flatnonzero(keep)
            # blocks of galaxies small enough that the per-assignment temporaries stay in
            # cache and are recycled by the allocator, instead of being faulted in anew
            for start in range(0, good.size, _BLOCK):
                rows = good[start : start + _BLOCK]
                galaxy, patch, prow, pcol = _pairs(chunk.ra[rows], chunk.dec[rows], sub, lookup)
                if first_pass:
                    used = int(np.count_nonzero(np.diff(galaxy))) + 1 if galaxy.size else 0
                    acct.used += used
                    acct.rejected["outside"] += rows.size - used
                    acct.assignments += galaxy.size
                slot = local[patch]
                if select:
                    mine = np.flatnonzero(slot >= 0)
                    galaxy, slot, prow, pcol = galaxy[mine], slot[mine], prow[mine], pcol[mine]
                # per-assignment galaxy properties, gathered from the chunk's rows
                src = rows[galaxy]
                bins = chunk.bin[src].astype(np.int64)
                w = chunk.weight[src].astype(np.float64)
                e1 = chunk.e1[src].astype(np.float64)
                e2 = chunk.e2[src].astype(np.float64)
                g1, g2 = (e1, e2) if identity else apply_calibration(cal, bins, e1, e2)
                prow *= npix
                prow += pcol
                flat = slot * n_bins
                flat += bins
                flat *= npix * npix
                flat += prow.astype(np.int64)
                acc.add_flat(flat, w, g1, g2)
        if first_pass:
            acct.reconcile(where)
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


def occupancy_mask(nside: int, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Count of galaxies in each HEALPix (RING) pixel; ``> 0`` is the occupancy footprint."""
    return np.bincount(hp.ang2pix(nside, ra, dec, lonlat=True), minlength=hp.nside2npix(nside))
