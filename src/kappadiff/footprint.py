"""Survey footprints as HEALPix masks: the DES round-19 polygon, polygon files, mask files.

The DES wide-field footprint polygon (round 19, March 2019; RA/Dec vertices in degrees,
RA continuous across 0 as -60..99) ships with the ``skyproj`` package as
``skyproj/data/des-round19-poly.txt``; it is read from the installed package. DES-Y3's
shape catalogue covers 4143 deg^2 of it after masking (Gatti et al. 2021).

Readers (:func:`read_polygon`, :func:`read_healpix_mask`) do the file I/O; rasterising
(:func:`polygon_mask`) is pure.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import healpy as hp
import numpy as np
from matplotlib.path import Path as _MplPath

from .errors import KappadiffInputError

__all__ = [
    "FootprintError",
    "des_polygon_path",
    "footprint_mask",
    "polygon_mask",
    "read_healpix_mask",
    "read_polygon",
]

#: Suffixes that mark a footprint given as a HEALPix mask file rather than a polygon.
MASK_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fz")


class FootprintError(KappadiffInputError):
    """A footprint file cannot be used; the message names the file and the problem."""


def des_polygon_path() -> Path:
    """Path of the DES round-19 footprint polygon inside the installed ``skyproj`` package."""
    path = Path(str(resources.files("skyproj") / "data" / "des-round19-poly.txt"))
    if not path.is_file():
        raise FootprintError(f"{path}: the skyproj package does not ship the DES round-19 polygon")
    return path


def read_polygon(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read polygon(s) from a text file of ``ra dec [poly_id]`` rows (degrees, '#' comments).

    This is the format of skyproj's survey outlines. Rows sharing a ``poly_id`` (third
    column; all one polygon if absent) form one closed polygon, in file order.

    Returns
    -------
    list of (ra, dec)
        Vertex arrays in degrees, one pair per polygon.
    """
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as err:
        raise FootprintError(f"{path}: not a table of 'ra dec [poly]' numbers ({err})") from err
    if data.shape[1] not in (2, 3):
        raise FootprintError(f"{path}: {data.shape[1]} columns, expected 2 (ra dec) or 3")
    ids = data[:, 2] if data.shape[1] == 3 else np.zeros(len(data))
    polys = []
    for pid in np.unique(ids):
        rows = data[ids == pid]
        if len(rows) < 3:
            raise FootprintError(f"{path}: polygon {pid:g} has {len(rows)} vertices (< 3)")
        bad = np.abs(rows[:, 1]) > 90.0
        if bad.any():
            raise FootprintError(f"{path}: {bad.sum()} vertices with |dec| > 90 in polygon {pid:g}")
        polys.append((rows[:, 0], rows[:, 1]))
    return polys


def polygon_mask(polygons: list[tuple[np.ndarray, np.ndarray]], nside: int) -> np.ndarray:
    """Rasterise RA/Dec polygons to a HEALPix RING mask (pixel centre inside any polygon).

    Polygon edges are straight lines in (RA, Dec), as survey footprint files are drawn
    (vertices 1 deg apart or less for DES). Vertex RAs are unwrapped so consecutive
    vertices differ by less than 180 deg, and each pixel's RA is shifted by a multiple of
    360 deg into the polygon's RA window, so a polygon may cross RA = 0/360 written either
    way (-60..99 or 300..99). Polygons must not enclose a pole.

    Returns
    -------
    ndarray, bool, shape (12 nside^2,)
    """
    npix = hp.nside2npix(nside)
    mask = np.zeros(npix, dtype=bool)
    ra_all, dec_all = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    for ra_v, dec_v in polygons:
        ra_v = np.degrees(np.unwrap(np.radians(np.asarray(ra_v, dtype=np.float64))))
        dec_v = np.asarray(dec_v, dtype=np.float64)
        path = _MplPath(np.column_stack([ra_v, dec_v]), closed=False)
        # only pixels in the polygon's Dec band are tested
        cand = np.flatnonzero((dec_all >= dec_v.min()) & (dec_all <= dec_v.max()))
        ra, dec = ra_all[cand], dec_all[cand]
        # bring pixel RAs into the polygon's RA window [min, min + 360)
        ra = ra_v.min() + (ra - ra_v.min()) % 360.0
        hit = path.contains_points(np.column_stack([ra, dec]))
        mask[cand[hit]] = True
    return mask


def read_healpix_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a HEALPix footprint mask (any ordering healpy reads; values > 0 are inside).

    Returns
    -------
    ndarray, bool, shape (12 nside^2,)
        RING-ordered mask; UNSEEN and non-finite pixels count as outside.
    """
    try:
        values = hp.read_map(path, field=0, dtype=np.float64, nest=False)
    except (OSError, ValueError, KeyError) as err:
        raise FootprintError(f"{path}: not a HEALPix map readable by healpy ({err})") from err
    mask = np.isfinite(values) & (values != hp.UNSEEN) & (values > 0)
    if not mask.any():
        raise FootprintError(f"{path}: no pixel of the {values.size}-pixel mask is > 0")
    return mask


def footprint_mask(source: str, nside: int) -> np.ndarray:
    """The footprint named in the configuration as a HEALPix RING mask at ``nside``.

    Parameters
    ----------
    source
        ``'des'`` (the DES round-19 polygon shipped with skyproj), a HEALPix mask file
        (suffix .fits, .fits.gz, .fit, .fz; values > 0 inside), or a polygon text file
        (``ra dec [poly_id]`` rows).
    nside
        Resolution of the returned mask. A mask file is degraded or upgraded to it (a
        coarse pixel is inside when more than half of its area is).
    """
    if source == "des":
        return polygon_mask(read_polygon(des_polygon_path()), nside)
    if not Path(source).is_file():
        raise FootprintError(f"{source}: footprint file not found (layout.footprint)")
    if source.endswith(MASK_SUFFIXES):
        mask = read_healpix_mask(source)
        if hp.npix2nside(mask.size) != nside:
            mask = hp.ud_grade(mask.astype(np.float64), nside) > 0.5
        return mask
    return polygon_mask(read_polygon(source), nside)
