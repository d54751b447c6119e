"""Sphere <-> flat-patch geometry: patch layouts, gnomonic projection, extraction, mosaics.

Conventions (docs/architecture.md): a patch of ``npix x npix`` pixels of side ``s`` is the
gnomonic (TAN) projection about its centre ``(ra0, dec0)``; array index ``[row, col]`` with
row growing north and col growing west (east left, as FITS and DS9 show the sky). Pixel
``(row j, col i)`` has its centre at intermediate coordinates

    x = -(i - (n - 1) / 2) s,    y = (j - (n - 1) / 2) s,

with ``x`` toward east and ``y`` toward north, in degrees: exactly the WCS of
:func:`kappadiff.products.tan_header`. HEALPix maps are RING ordered.

Extraction is a gather through precomputed HEALPix index tables (:func:`pixel_table`,
:func:`bilinear_table`), built once per (nside, layout, patch geometry) and reused for every
map and bin. Mosaicking gives each HEALPix pixel to one owning patch (the one in which it lies
farthest from the edge), so a mosaicked posterior standard deviation stays a true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import healpy as hp
import numpy as np

__all__ = [
    "MosaicAssignment",
    "bilinear_table",
    "extract",
    "footprint_layout",
    "fullsky_layout",
    "mosaic",
    "mosaic_assignment",
    "patch_coverage",
    "pixel_table",
    "separated_interior_patches",
    "sky_to_pixel",
    "tan_deproject",
    "tan_project",
]

#: Patches projected per chunk when building index tables: bounds the float64
#: temporaries (3 x 8 bytes x 64 x 256^2 = 100 MB at paper scale).
_CHUNK = 64


def fullsky_layout(patch_size_deg: float, n_rings: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres tiling the full sky in iso-latitude rings.

    Ring ``k`` of ``n_rings`` has its centres at ``Dec_k = -90 + (k + 1/2) 180 / n_rings``
    and holds ``round(360 cos Dec_k / patch_size_deg)`` equally spaced patches, the first at
    ``RA = 0``.

    Parameters
    ----------
    patch_size_deg
        Patch side in degrees (4.2667 in the paper).
    n_rings
        Number of iso-latitude rings; 40 rings are 4.5 deg apart.

    Returns
    -------
    ra, dec : ndarray, shape (n_patch,)
        Centres in degrees, ring by ring from the south pole, RA increasing in a ring.

    Notes
    -----
    With 4.2667 deg patches and 40 rings this gives exactly 2,146 patches, the count
    per simulated sky of Boruah et al. (2025). Rings are 4.5 deg apart, so consecutive rings
    leave thin uncovered bands (0.23 deg at the equator) where the patch edges curve less
    than the ring spacing; along a ring the patches touch or overlap slightly, and near the
    poles they overlap strongly.
    """
    dec_rings = -90.0 + (np.arange(n_rings) + 0.5) * 180.0 / n_rings
    ra, dec = [], []
    for d in dec_rings:
        n = max(1, int(round(360.0 * np.cos(np.radians(d)) / patch_size_deg)))
        ra.append(np.arange(n) * 360.0 / n)
        dec.append(np.full(n, d))
    return np.concatenate(ra), np.concatenate(dec)


def _basis(ra0: np.ndarray, dec0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (centre, east, north) of the tangent planes at ``(ra0, dec0)``, [..., 3]."""
    a = np.radians(np.asarray(ra0, dtype=np.float64))
    d = np.radians(np.asarray(dec0, dtype=np.float64))
    ca, sa, cd, sd = np.cos(a), np.sin(a), np.cos(d), np.sin(d)
    centre = np.stack([cd * ca, cd * sa, sd], axis=-1)
    east = np.stack([-sa, ca, np.zeros_like(a)], axis=-1)
    north = np.stack([-sd * ca, -sd * sa, cd], axis=-1)
    return centre, east, north


def _radec_to_vec(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(ra, dtype=np.float64))
    d = np.radians(np.asarray(dec, dtype=np.float64))
    cd = np.cos(d)
    return np.stack([cd * np.cos(a), cd * np.sin(a), np.sin(d)], axis=-1)


def tan_project(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection of sky positions onto the tangent plane at ``(ra0, dec0)``.

    Parameters
    ----------
    ra, dec
        Positions in degrees (any matching shapes).
    ra0, dec0
        Tangent point in degrees.

    Returns
    -------
    x, y : ndarray
        Intermediate world coordinates in degrees: ``x`` toward east (increasing RA),
        ``y`` toward north; ``(180/pi) tan(c)`` times the direction, c the angular distance
        from the tangent point (Calabretta & Greisen 2002, eq. 54). Points on the far
        hemisphere (``c >= 90 deg``) get NaN.
    """
    v = _radec_to_vec(ra, dec)
    centre, east, north = _basis(ra0, dec0)
    w = v @ centre
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(w > 0, np.degrees(1.0) / w, np.nan)
    return (v @ east) * inv, (v @ north) * inv


def tan_deproject(
    x: np.ndarray, y: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project`: tangent-plane ``(x, y)`` in degrees to (RA, Dec).

    Returns RA in [0, 360) and Dec in [-90, 90], degrees.
    """
    v = _plane_to_vec(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), ra0, dec0)
    ra = np.degrees(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    return ra, dec


def _plane_to_vec(x: np.ndarray, y: np.ndarray, ra0, dec0) -> np.ndarray:
    """Unit vectors of tangent-plane points (degrees), [..., 3]; ra0/dec0 broadcast with x."""
    centre, east, north = _basis(ra0, dec0)
    xr = np.radians(x)[..., None]
    yr = np.radians(y)[..., None]
    v = centre + xr * east + yr * north
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sky_to_pixel(
    ra: np.ndarray,
    dec: np.ndarray,
    ra0: float,
    dec0: float,
    npix: int,
    pixel_scale_arcmin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Float pixel coordinates ``(row, col)`` of sky positions in a patch.

    Integer values are pixel centres; the patch covers ``-0.5 <= row, col < npix - 0.5``.
    Positions on the far hemisphere get NaN.
    """
    x, y = tan_project(ra, dec, ra0, dec0)
    s = pixel_scale_arcmin / 60.0
    c = 0.5 * (npix - 1)
    return c + y / s, c - x / s


def _pixel_offsets(npix: int, pixel_scale_arcmin: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane coordinates (deg) of the pixel centres, each [npix, npix] (row, col)."""
    s = pixel_scale_arcmin / 60.0
    k = (np.arange(npix) - 0.5 * (npix - 1)) * s
    y, x = np.meshgrid(k, -k, indexing="ij")
    return x, y


def _patch_vectors(
    ra0s: np.ndarray, dec0s: np.ndarray, npix: int, pixel_scale_arcmin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directions of every pixel centre of the patches, 3 arrays [patch, row, col].

    The vectors ``centre + X east + Y north`` (X, Y tangent-plane coordinates in radians)
    are not normalised: healpy's ``vec2pix`` and ``vec2ang`` normalise internally, and
    skipping it here makes the table build 4 times faster.
    """
    x, y = _pixel_offsets(npix, pixel_scale_arcmin)
    x, y = np.radians(x), np.radians(y)
    centre, east, north = _basis(ra0s, dec0s)
    return tuple(
        centre[:, k, None, None] + east[:, k, None, None] * x + north[:, k, None, None] * y
        for k in range(3)
    )


def _as_centres(ra0s, dec0s) -> tuple[np.ndarray, np.ndarray]:
    ra0s = np.atleast_1d(np.asarray(ra0s, dtype=np.float64))
    dec0s = np.atleast_1d(np.asarray(dec0s, dtype=np.float64))
    if ra0s.shape != dec0s.shape or ra0s.ndim != 1:
        raise ValueError(f"patch centres: ra0s {ra0s.shape} and dec0s {dec0s.shape} differ")
    if np.any(np.abs(dec0s) > 90.0):
        raise ValueError(f"patch centres: {np.sum(np.abs(dec0s) > 90)} Dec values beyond +-90")
    return ra0s, dec0s


def pixel_table(
    nside: int,
    ra0s: np.ndarray,
    dec0s: np.ndarray,
    npix: int,
    pixel_scale_arcmin: float,
) -> np.ndarray:
    """HEALPix RING index of the pixel containing each patch pixel centre (nearest pixel).

    Parameters
    ----------
    nside
        HEALPix resolution of the maps the table will gather from.
    ra0s, dec0s : array_like, shape (n_patch,)
        Patch centres in degrees.
    npix
        Pixels on a side of a patch.
    pixel_scale_arcmin
        Pixel side in arcmin.

    Returns
    -------
    ndarray, int64, shape (n_patch, npix, npix)
        Indices ``[patch, row, col]``; ``maps[..., table]`` is the nearest-pixel cut-out,
        identical to healpy's ``GnomonicProj(rot=(ra0, dec0, 0), xsize=npix,
        reso=pixel_scale_arcmin).projmap``.
    """
    ra0s, dec0s = _as_centres(ra0s, dec0s)
    table = np.empty((len(ra0s), npix, npix), dtype=np.int64)
    for start in range(0, len(ra0s), _CHUNK):
        sl = slice(start, start + _CHUNK)
        table[sl] = hp.vec2pix(
            nside, *_patch_vectors(ra0s[sl], dec0s[sl], npix, pixel_scale_arcmin)
        )
    return table


def bilinear_table(
    nside: int,
    ra0s: np.ndarray,
    dec0s: np.ndarray,
    npix: int,
    pixel_scale_arcmin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights for bilinear interpolation of HEALPix maps at patch pixel centres.

    Returns
    -------
    table : ndarray, int64, shape (n_patch, npix, npix, 4)
        RING indices of the four neighbouring HEALPix pixels.
    weights : ndarray, float32, shape (n_patch, npix, npix, 4)
        Their weights (summing to 1), from ``healpy.get_interp_weights`` (linear in
        longitude between the two nearest pixels of the two nearest rings, then in latitude).
    """
    ra0s, dec0s = _as_centres(ra0s, dec0s)
    shape = (len(ra0s), npix, npix, 4)
    table = np.empty(shape, dtype=np.int64)
    weights = np.empty(shape, dtype=np.float32)
    for start in range(0, len(ra0s), _CHUNK):
        sl = slice(start, start + _CHUNK)
        v = _patch_vectors(ra0s[sl], dec0s[sl], npix, pixel_scale_arcmin)
        theta, phi = hp.vec2ang(np.stack([c.ravel() for c in v], axis=-1))
        pix, w = hp.get_interp_weights(nside, theta, phi)
        table[sl] = pix.T.reshape(-1, npix, npix, 4)
        weights[sl] = w.T.reshape(-1, npix, npix, 4)
    return table, weights


def extract(maps: np.ndarray, table: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Cut patches out of HEALPix maps by gathering through an index table.

    Parameters
    ----------
    maps : ndarray, shape (n_bin, npix_hp) or (npix_hp,)
        HEALPix maps (RING) of the table's nside.
    table : ndarray, int64, shape (n_patch, n, n) or (n_patch, n, n, 4)
        From :func:`pixel_table` (nearest) or :func:`bilinear_table` (with ``weights``).
    weights : ndarray, shape (n_patch, n, n, 4), optional
        Bilinear weights; required with a 4-neighbour table.

    Returns
    -------
    ndarray, float32, shape (n_patch, n_bin, n, n)
        Cut-outs ``[patch, bin, row, col]`` (the bin axis is kept, of length 1, for a
        single map).
    """
    maps = np.asarray(maps)
    maps = maps[None] if maps.ndim == 1 else maps
    if (weights is None) != (table.ndim == 3):
        raise ValueError(
            f"extract: table of shape {table.shape} needs "
            f"{'no weights' if table.ndim == 3 else 'bilinear weights'}"
        )
    npix_hp = maps.shape[-1]
    if table.size and (table.min() < 0 or table.max() >= npix_hp):
        raise ValueError(f"extract: table indices outside the {npix_hp}-pixel maps")
    out = np.empty((table.shape[0], maps.shape[0], *table.shape[1:3]), dtype=np.float32)
    for b, m in enumerate(maps):
        m = np.asarray(m, dtype=np.float32)  # a no-op for float32 maps
        if weights is None:
            # indices were bounds-checked above; mode="clip" lets numpy gather straight
            # into the strided output without the temporary of m[table] (10x faster)
            np.take(m, table, out=out[:, b], mode="clip")
        else:
            # patch by patch keeps the [n, n, 4] float temporaries small
            for p in range(table.shape[0]):
                out[p, b] = np.einsum("ijk,ijk->ij", m[table[p]], weights[p])
    return out


def patch_coverage(
    mask: np.ndarray, ra0s: np.ndarray, dec0s: np.ndarray, patch_size_deg: float, n_sub: int = 32
) -> np.ndarray:
    """Fraction of each patch's area inside a HEALPix mask.

    Parameters
    ----------
    mask : ndarray, bool, shape (npix_hp,)
        True inside the footprint (RING).
    ra0s, dec0s : array_like, shape (n_patch,)
        Patch centres in degrees.
    patch_size_deg
        Patch side in degrees.
    n_sub
        The patch is sampled on ``n_sub x n_sub`` points (pixel centres of a coarse grid).

    Returns
    -------
    ndarray, float64, shape (n_patch,)
        Fraction of sample points whose HEALPix pixel is inside the mask (gnomonic pixels
        of one patch have near-equal solid angle: 1.3 % spread at 4.27 deg).
    """
    mask = np.asarray(mask, dtype=bool)
    nside = hp.npix2nside(mask.size)
    table = pixel_table(nside, ra0s, dec0s, n_sub, patch_size_deg * 60.0 / n_sub)
    return mask[table].mean(axis=(1, 2))


def footprint_layout(
    mask: np.ndarray,
    spacing_deg: float,
    min_coverage: float,
    patch_size_deg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping patches covering a survey footprint.

    Candidate centres lie on iso-latitude rings ``spacing_deg`` apart (one ring on the
    equator), ``spacing_deg / cos(Dec)`` apart in RA along a ring (the first at RA = 0, so
    the layout is continuous across RA = 0/360). A candidate is kept when at least
    ``min_coverage`` of its area is inside the footprint.

    Parameters
    ----------
    mask : ndarray, bool, shape (npix_hp,)
        Footprint as a HEALPix RING mask.
    spacing_deg
        Centre spacing in degrees; below ``patch_size_deg`` the patches overlap.
    min_coverage
        Minimum fraction of a patch inside the footprint, in (0, 1].
    patch_size_deg
        Patch side in degrees.

    Returns
    -------
    ra, dec, coverage : ndarray, shape (n_patch,)
        Kept centres (degrees), ordered by ring from the south then by RA, and their
        footprint coverage fraction.
    """
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"footprint_layout: min_coverage = {min_coverage} not in (0, 1]")
    if spacing_deg <= 0:
        raise ValueError(f"footprint_layout: spacing_deg = {spacing_deg} must be positive")
    mask = np.asarray(mask, dtype=bool)
    nside = hp.npix2nside(mask.size)
    inside = np.flatnonzero(mask)
    if inside.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    _, dec_in = hp.pix2ang(nside, inside, lonlat=True)
    # only rings whose patches can touch the footprint's Dec range
    reach = 0.75 * patch_size_deg + hp.nside2resol(nside, arcmin=True) / 60.0
    k = np.arange(np.floor(-90.0 / spacing_deg), np.ceil(90.0 / spacing_deg) + 1)
    dec_rings = k * spacing_deg
    keep = (
        (np.abs(dec_rings) < 90.0)
        & (dec_rings > dec_in.min() - reach)
        & (dec_rings < dec_in.max() + reach)
    )
    ra, dec = [], []
    for d in dec_rings[keep]:
        n = max(1, int(np.ceil(360.0 * np.cos(np.radians(d)) / spacing_deg)))
        ra.append(np.arange(n) * 360.0 / n)
        dec.append(np.full(n, d))
    ra = np.concatenate(ra)
    dec = np.concatenate(dec)
    cov = patch_coverage(mask, ra, dec, patch_size_deg)
    sel = cov >= min_coverage
    return ra[sel], dec[sel], cov[sel]


def separated_interior_patches(
    ra: np.ndarray,
    dec: np.ndarray,
    coverage: np.ndarray,
    patch_size_deg: float,
) -> list[int]:
    """Ids of fully covered patches no two of which overlap, taken greedily in id order.

    Two square patches of side ``s`` cannot overlap when their centres are more than the
    diagonal ``sqrt(2) s`` apart, so each patch kept is that far from every patch kept
    before it. These are the patches whose mocks give independent truths.

    Parameters
    ----------
    ra, dec : ndarray, shape (n_patch,)
        Patch centres in degrees (patch id = index).
    coverage : ndarray, shape (n_patch,)
        Fraction of each patch inside the footprint.
    patch_size_deg
        Patch side in degrees.
    """
    vec = hp.ang2vec(np.asarray(ra), np.asarray(dec), lonlat=True)
    cos_min = np.cos(np.radians(np.sqrt(2.0) * patch_size_deg))
    kept: list[int] = []
    for i in np.flatnonzero(np.asarray(coverage) >= 1.0):
        if not kept or np.all(vec[kept] @ vec[i] < cos_min):
            kept.append(int(i))
    return kept


@dataclass(frozen=True)
class MosaicAssignment:
    """Which patch pixel each covered HEALPix pixel takes its value from.

    Attributes
    ----------
    nside
        HEALPix resolution of the mosaic.
    pixels : ndarray, int64, shape (m,)
        Covered HEALPix pixels (RING), sorted.
    patch : ndarray, int32, shape (m,)
        Owning patch (index into the layout): the one in which the pixel centre lies
        farthest from the patch edge.
    row, col : ndarray, float32, shape (m,)
        Float pixel coordinates of the HEALPix pixel centre in its owning patch.
    coverage : ndarray, int16, shape (12 nside^2,)
        Number of patches covering each HEALPix pixel (0 outside the layout).
    """

    nside: int
    pixels: np.ndarray
    patch: np.ndarray
    row: np.ndarray
    col: np.ndarray
    coverage: np.ndarray


def _patch_corners(ra0: float, dec0: float, npix: int, pixel_scale_arcmin: float) -> np.ndarray:
    """Unit vectors of the four outer corners of a patch, counter-clockwise, [4, 3]."""
    h = 0.5 * npix * pixel_scale_arcmin / 60.0
    x = np.array([h, -h, -h, h])
    y = np.array([-h, -h, h, h])
    return _plane_to_vec(x, y, ra0, dec0)


def _healpix_to_pixel(
    nside: int, pix: np.ndarray, ra0: float, dec0: float, npix: int, pixel_scale_arcmin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Float (row, col) in a patch of HEALPix pixel centres (vector form of sky_to_pixel)."""
    vx, vy, vz = hp.pix2vec(nside, pix)
    centre, east, north = _basis(ra0, dec0)
    w = vx * centre[0] + vy * centre[1] + vz * centre[2]
    inv = 1.0 / (np.radians(pixel_scale_arcmin / 60.0) * w)
    c = 0.5 * (npix - 1)
    row = c + (vx * north[0] + vy * north[1] + vz * north[2]) * inv
    col = c - (vx * east[0] + vy * east[1] + vz * east[2]) * inv
    return row, col


def _pixels_in_patch(
    nside: int, ra0: float, dec0: float, npix: int, pixel_scale_arcmin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HEALPix pixels whose centres fall inside a patch, and their (row, col) in it.

    A gnomonic square is bounded by great circles, so healpy's polygon query returns
    exactly the pixel centres inside it; the explicit bound check guards the edges
    against rounding.
    """
    pix = hp.query_polygon(nside, _patch_corners(ra0, dec0, npix, pixel_scale_arcmin))
    row, col = _healpix_to_pixel(nside, pix, ra0, dec0, npix, pixel_scale_arcmin)
    ok = (row >= -0.5) & (row < npix - 0.5) & (col >= -0.5) & (col < npix - 0.5)
    return pix[ok], row[ok], col[ok]


def mosaic_assignment(
    ra0s: np.ndarray,
    dec0s: np.ndarray,
    npix: int,
    pixel_scale_arcmin: float,
    nside: int,
) -> MosaicAssignment:
    """Give every HEALPix pixel covered by the patches to its owning patch.

    The owner is the patch in which the pixel centre is farthest from the edge, measured
    as ``npix/2 - max(|row - c|, |col - c|)`` (pixels, ``c = (npix-1)/2``); ties go to the
    lower patch index.
    """
    ra0s, dec0s = _as_centres(ra0s, dec0s)
    n_hp = hp.nside2npix(nside)
    best = np.full(n_hp, -np.inf, dtype=np.float32)
    owner = np.full(n_hp, -1, dtype=np.int32)
    coverage = np.zeros(n_hp, dtype=np.int16)
    c = 0.5 * (npix - 1)
    for p, (ra0, dec0) in enumerate(zip(ra0s, dec0s, strict=True)):
        pix, row, col = _pixels_in_patch(nside, ra0, dec0, npix, pixel_scale_arcmin)
        depth = (0.5 * npix - np.maximum(np.abs(row - c), np.abs(col - c))).astype(np.float32)
        better = depth > best[pix]
        best[pix[better]] = depth[better]
        owner[pix[better]] = p
        coverage[pix] += 1
    del best
    pixels = np.flatnonzero(owner >= 0)
    owner = owner[pixels]
    rows = np.empty(pixels.size, dtype=np.float32)
    cols = np.empty(pixels.size, dtype=np.float32)
    # recompute each owner's coordinates of its own pixels (cheaper than keeping all)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(ra0s) + 1))
    for p in range(len(ra0s)):
        idx = order[bounds[p] : bounds[p + 1]]
        if idx.size == 0:
            continue
        row, col = _healpix_to_pixel(
            nside, pixels[idx], ra0s[p], dec0s[p], npix, pixel_scale_arcmin
        )
        rows[idx] = row
        cols[idx] = col
    return MosaicAssignment(nside, pixels, owner, rows, cols, coverage)


def mosaic(
    values: np.ndarray,
    ra0s: np.ndarray,
    dec0s: np.ndarray,
    npix: int,
    pixel_scale_arcmin: float,
    nside: int,
    assignment: MosaicAssignment | None = None,
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Put per-patch flat maps back onto HEALPix, each pixel from its owning patch.

    Parameters
    ----------
    values : ndarray, shape (n_patch, ..., npix, npix)
        Flat maps ``[patch, ..., row, col]`` (e.g. ``[patch, bin, row, col]``).
    ra0s, dec0s : array_like, shape (n_patch,)
        Patch centres in degrees.
    npix, pixel_scale_arcmin
        Patch geometry.
    nside
        HEALPix resolution of the mosaic.
    assignment
        A precomputed :func:`mosaic_assignment` of this geometry, to reuse across products.
    fill
        Value of pixels not covered by any patch.

    Returns
    -------
    maps : ndarray, float32, shape (..., 12 nside^2)
        HEALPix RING maps.
    coverage : ndarray, int16, shape (12 nside^2,)
        Number of patches covering each pixel.

    Notes
    -----
    Each HEALPix pixel takes the value of the nearest flat pixel of a single patch, so a
    per-pixel posterior standard deviation mosaicked this way is still the standard
    deviation of posterior samples (no averaging of standard deviations).
    """
    values = np.asarray(values)
    if values.shape[0] != len(np.atleast_1d(ra0s)) or values.shape[-2:] != (npix, npix):
        raise ValueError(
            f"mosaic: values of shape {values.shape} do not match {len(np.atleast_1d(ra0s))} "
            f"patches of {npix} x {npix} pixels"
        )
    if assignment is None:
        assignment = mosaic_assignment(ra0s, dec0s, npix, pixel_scale_arcmin, nside)
    elif assignment.nside != nside:
        raise ValueError(f"mosaic: assignment is for nside {assignment.nside}, not {nside}")
    lead = values.shape[1:-2]
    out = np.full((*lead, hp.nside2npix(nside)), fill, dtype=np.float32)
    row = np.clip(np.rint(assignment.row), 0, npix - 1).astype(np.int64)
    col = np.clip(np.rint(assignment.col), 0, npix - 1).astype(np.int64)
    flat = values.reshape(values.shape[0], -1, npix, npix)
    out2 = out.reshape(-1, out.shape[-1])
    for k in range(flat.shape[1]):
        out2[k, assignment.pixels] = flat[assignment.patch, k, row, col]
    return out, assignment.coverage
