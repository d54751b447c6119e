"""Real-format shear catalogues made from a simulated sky, for the end-to-end tests.

Written independently of the pipeline's mock maker: a Gaussian convergence sky (4 bins),
galaxies Poisson-distributed over the configured patches inside the DES footprint, shapes
``e = R g + noise`` with per-galaxy responses R ~ 0.7, 5 % of the galaxies deselected, in
the public DES-Y3 HDF5 layout (metacal + index + SOMPZ) or as a FITS table with its own
column names and a scalar response column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fitsio
import healpy as hp
import numpy as np

from kappadiff.catalogue import PatchGrid, io, mock_positions, patch_lookup, shear_at_positions
from kappadiff.footprint import footprint_mask
from kappadiff.sims import shear_from_kappa
from kappadiff.stages.layout import footprint_layout_from_config

N_BINS = 4
RESPONSE = 0.7
#: FITS column names of :func:`write_fits`, as a user's column map gives them.
FITS_COLUMNS = {
    "ra": "RA",
    "dec": "DEC",
    "e1": "G1_OBS",
    "e2": "G2_OBS",
    "weight": "W",
    "bin": "ZBIN",
    "response": "R",
}


def _sky(nside: int, rng: np.random.Generator) -> np.ndarray:
    """Four correlated Gaussian convergence maps (rms ~0.01-0.02), smoothed to 1 degree."""
    base = hp.smoothing(rng.normal(0, 1, hp.nside2npix(nside)), fwhm=np.radians(1.0))
    base /= base.std()
    noise = rng.normal(0, 1, (N_BINS, base.size))
    return np.array([0.005 * (b + 1) * base + 0.003 * noise[b] for b in range(N_BINS)])


def galaxies(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Galaxies over the data and validation patches with shapes from a simulated sky."""
    rng = np.random.default_rng(seed)
    lay = config["layout"]
    ra0, dec0, _ = footprint_layout_from_config(config)
    ids = sorted(set(config["sampling"]["patches"]) | set(config["validation"]["patches"]))
    grid = PatchGrid(ra0, dec0, int(lay["npix"]), float(lay["pixel_scale_arcmin"]))
    grid = grid.subset(np.asarray(ids))
    lookup = patch_lookup(grid)
    mask = footprint_mask(lay["footprint"], lay["footprint_nside"])
    kappa = _sky(config["sims"]["nside"], rng)
    g1map, g2map = shear_from_kappa(kappa)
    density = float(np.sum(config["catalogue"]["n_eff"]))
    drawn = [mock_positions(rng, grid, k, density, lookup, mask) for k in range(len(ids))]
    ra = np.concatenate([p[0] for p in drawn])
    dec = np.concatenate([p[1] for p in drawn])
    n = ra.size
    bins = rng.integers(0, N_BINS, n)
    g1, g2 = shear_at_positions(ra, dec, bins, g1map, g2map)
    r11 = rng.normal(RESPONSE, 0.05, n)
    r22 = rng.normal(RESPONSE, 0.05, n)
    return {
        "ra": ra,
        "dec": dec,
        "e1": r11 * g1 + rng.normal(0, 0.2, n),
        "e2": r22 * g2 + rng.normal(0, 0.2, n),
        "weight": rng.uniform(0.5, 1.5, n),
        "bin": bins,
        "R11": r11,
        "R12": rng.normal(0, 0.01, n),
        "R21": rng.normal(0, 0.01, n),
        "R22": r22,
        "selected": rng.random(n) > 0.05,
    }


def write_desy3(folder: Path, config: dict[str, Any], seed: int = 11) -> dict[str, str]:
    """The catalogue in the DES-Y3 HDF5 layout; returns ``catalogue.desy3`` of a config."""
    cols = galaxies(config, seed)
    files = io.DESY3Files(
        folder / "DESY3_metacal_v03-004.h5",
        folder / "DESY3_indexcat.h5",
        folder / "DESY3_sompz_v0.50.h5",
    )
    keep = np.flatnonzero(cols.pop("selected"))
    select = {"": keep, **{f"_{s}": keep for s in ("1p", "1m", "2p", "2m")}}
    io.write_desy3_catalogue(files, cols, select=select)
    return {"metacal": str(files.metacal), "index": str(files.index), "sompz": str(files.sompz)}


def write_fits(path: Path, config: dict[str, Any], seed: int = 12) -> dict[str, Any]:
    """The catalogue as a FITS table with a scalar response; returns ``catalogue.fits``."""
    cols = galaxies(config, seed)
    keep = cols.pop("selected")
    # a scalar-response catalogue: one response a galaxy, deselected rows carry no bin
    response = 0.5 * (cols["R11"] + cols["R22"])
    dtype = [(v, "i2" if k == "bin" else "f8") for k, v in FITS_COLUMNS.items()]
    table = np.zeros(cols["ra"].size, dtype=dtype)
    for key, name in FITS_COLUMNS.items():
        table[name] = response if key == "response" else cols[key]
    table["ZBIN"] = np.where(keep, cols["bin"], -1)
    fitsio.write(str(path), table, extname="SHEAR", clobber=True)
    return {"path": str(path), "extension": 1, "radec_units": "deg", "columns": FITS_COLUMNS}
