"""Mock catalogues: galaxy positions, the shear at them, shapes, and mocks of a real catalogue.

:func:`mock_positions` draws Poisson positions that patches own without double counting
their overlaps, :func:`shear_at_positions` interpolates the DES-convention shear of HEALPix
maps at the galaxies, :func:`mock_shapes` adds Gaussian shape noise, and
:func:`mock_catalogue` draws a whole mock catalogue from a simulated sky with them, and
:class:`ShapeNoiseMock` turns a real catalogue into a mock of known shear (its shapes
rotated, a simulated shear added). :func:`occupancy_mask` counts galaxies per HEALPix pixel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import healpy as hp
import numpy as np

from ..seeding import rng_for
from ..sims import shear_from_kappa
from .assignment import PatchGrid, PatchLookup, first_containing_patch, patch_lookup
from .cuts import GalaxyChunk

__all__ = [
    "ShapeNoiseMock",
    "mock_catalogue",
    "mock_positions",
    "mock_shapes",
    "occupancy_mask",
    "shear_at_positions",
]

log = logging.getLogger(__name__)


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


def mock_catalogue(
    kappa: np.ndarray,
    grid: PatchGrid,
    ids: Sequence[int],
    n_eff: Sequence[float],
    sigma_e: Sequence[float],
    seed: int,
    footprint: np.ndarray | None = None,
    reduced_shear: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Galaxy columns of a mock catalogue drawn from a simulated sky, one (bin, patch) a chunk.

    Galaxies are Poisson distributed at ``n_eff`` per bin over the union of the patches of
    ``grid`` (inside ``footprint``; :func:`mock_positions`), sheared by the sky's
    convergence (healpy spin-2 shear at each galaxy, DES sign, reduced if
    ``reduced_shear``; :func:`shear_at_positions`) plus Gaussian shape noise ``sigma_e``
    (:func:`mock_shapes`). Bins are drawn one after the other, so only one bin's shear maps
    are held in memory.

    Parameters
    ----------
    kappa : (n_bins, npix_hp)
        Convergence maps of the sky, HEALPix RING.
    grid, ids
        The patches and their ids; the galaxies of patch ``ids[k]`` in bin ``b`` are drawn
        from ``rng_for(seed, "mock_catalogue", ids[k], b)``.
    n_eff, sigma_e
        Galaxy density (arcmin^-2) and shape noise per component, per bin.
    seed
        Seed of the configuration.
    footprint
        HEALPix RING bool map outside which no galaxy is drawn.
    reduced_shear
        Whether galaxies carry the reduced shear ``gamma / (1 - kappa)``.

    Yields
    ------
    dict
        Columns ``ra, dec, e1, e2, weight, bin`` (weights 1, bins 0-based) of one bin of
        one patch.
    """
    lookup = patch_lookup(grid)
    n_eff = np.asarray(n_eff, dtype=np.float64)
    sigma_e = np.asarray(sigma_e, dtype=np.float64)
    for b in range(len(kappa)):
        g1map, g2map = shear_from_kappa(kappa[b])
        for k, pid in enumerate(ids):
            rng = rng_for(seed, "mock_catalogue", int(pid), b)
            ra, dec = mock_positions(rng, grid, k, n_eff[b], lookup, footprint)
            bins = np.full(ra.size, b, dtype=np.int64)
            maps = (g1map[None], g2map[None], kappa[b][None] if reduced_shear else None)
            g1, g2 = shear_at_positions(ra, dec, np.zeros_like(bins), *maps)
            e1, e2 = mock_shapes(rng, g1, g2, bins, sigma_e)
            log.info("bin %d, patch %d: %d galaxies", b + 1, pid, ra.size)
            yield {
                "ra": ra,
                "dec": dec,
                "e1": e1,
                "e2": e2,
                "weight": np.ones(ra.size),
                "bin": bins,
            }
        del g1map, g2map


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
