"""Simulation tomography: one simulated sky to its four DES-Y3 convergence maps."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..products import provenance, write_healpix
from ..seeding import derive_seed
from ..shells import read_shells
from ..sims import (
    Cosmology,
    born_kappa,
    born_weights,
    check_nz_overlap,
    lensing_cosmology,
    lognormal_kappa,
    shell_edges,
)
from ..survey import DESY3_N_BINS, DESY3_NZ_ZMAX, NzError, desy3_nz, read_nz

__all__ = ["make_tomography", "source_nz"]

log = logging.getLogger(__name__)

#: Relative tolerance between the cosmology recorded with N-body shells and the config's.
COSMOLOGY_RTOL = 1e-3
#: Redshift step of the grid on which the built-in n(z) is tabulated.
BUILTIN_NZ_DZ = 0.005


def source_nz(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """The source n(z) named by the ``sims.nz`` config value.

    Parameters
    ----------
    spec
        ``'builtin'`` (the parametric DES-Y3 fit on 0 <= z <= 3) or a path read by
        :func:`kappadiff.survey.read_nz`.

    Returns
    -------
    z : ndarray, shape (nz,)
    nz : ndarray, shape (4, nz)

    Raises
    ------
    NzError
        If the file does not hold exactly the four DES-Y3 bins.
    """
    if spec == "builtin":
        z = np.linspace(0.0, DESY3_NZ_ZMAX, int(round(DESY3_NZ_ZMAX / BUILTIN_NZ_DZ)) + 1)
        return z, desy3_nz(z)
    z, nz = read_nz(spec)
    if nz.shape[0] != DESY3_N_BINS:
        raise NzError(f"{spec}: {nz.shape[0]} tomographic bins, expected {DESY3_N_BINS}")
    return z, nz


def _lognormal_sky(
    sims: Mapping[str, Any],
    index: int,
    seed: int,
    cosmo: Cosmology,
    z_nz: np.ndarray,
    nz: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A GLASS lognormal sky: κ maps ``(4, npix)``, shell redshift edges, header cards."""
    nside = int(sims["nside"])
    model = lensing_cosmology(cosmo, zmax=max(sims["shell_zmax"], z_nz[-1]))
    z_edges = shell_edges(model, sims["shell_zmax"], sims["shell_dchi"])
    check_nz_overlap(z_edges, z_nz, nz, sims["nz"])
    lmax = int(sims["lmax_factor"] * nside)
    log.info(
        "sky %d: lognormal, %d shells to z = %.2f, nside %d, lmax %d, seed %d",
        index,
        len(z_edges) - 1,
        z_edges[-1],
        nside,
        lmax,
        seed,
    )
    kappa = lognormal_kappa(model, z_edges, z_nz, nz, nside, lmax, np.random.default_rng(seed))
    return kappa, z_edges, {"LMAX": lmax, "SHDCHI": float(sims["shell_dchi"])}


def _check_shell_cosmology(source: str, recorded: Mapping[str, float], cosmo: Cosmology) -> None:
    """Refuse N-body shells whose recorded cosmology differs from ``sims.cosmology``."""
    for name, value in recorded.items():
        if not np.isclose(value, getattr(cosmo, name), rtol=COSMOLOGY_RTOL):
            raise ValueError(
                f"{source}: the simulation has {name} = {value}, but "
                f"sims.cosmology.{name} = {getattr(cosmo, name)}; the lensing kernels "
                "must use the simulation's cosmology"
            )


def _shell_sky(
    sims: Mapping[str, Any], index: int, cosmo: Cosmology, z_nz: np.ndarray, nz: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Born κ of N-body shells ``sims.shell_files[index]``: maps, shell edges, header cards."""
    nside = int(sims["nside"])
    files = sims["shell_files"]
    if index >= len(files):
        raise ValueError(f"sims.shell_files lists {len(files)} simulations; sky {index} has none")
    shells = read_shells(sims["source"], files[index], zmax=z_nz[-1])
    _check_shell_cosmology(shells.source, shells.cosmology, cosmo)
    z_edges = shells.z_edges
    check_nz_overlap(z_edges, z_nz, nz, sims["nz"])
    model = lensing_cosmology(cosmo, zmax=max(z_edges[-1], z_nz[-1]))
    weights = born_weights(model, z_edges, z_nz, nz)
    log.info(
        "sky %d: %d %s shells (nside %d) from %s to nside %d",
        index,
        shells.n_shell,
        sims["source"],
        shells.nside,
        shells.source,
        nside,
    )
    kappa = born_kappa(shells.deltas(nside), weights)
    return kappa, z_edges, {"SHELLSRC": os.fspath(files[index]), "SHNSIDE": shells.nside}


def make_tomography(config: Mapping[str, Any], index: int, output: str | os.PathLike) -> np.ndarray:
    """Make and write the convergence maps of simulated sky ``index``.

    Parameters
    ----------
    config
        The validated configuration (``sims`` section and ``seed`` are used).
    index
        Sky number: seeds the lognormal sky, or selects ``sims.shell_files[index]``.
    output
        Path of ``kappa.fits``: HEALPix RING, COORDSYS 'C', columns BIN1..BIN4, with the
        cosmology, nside, n(z) source and seed or shell source in the header.

    Returns
    -------
    ndarray, shape (4, 12 nside²)
        The maps written (float32).
    """
    sims = config["sims"]
    start = time.perf_counter()
    # healpy logs two INFO lines per shell synthesis; keep the rule's log readable
    logging.getLogger("healpy").setLevel(logging.WARNING)
    cosmo = Cosmology.from_config(sims["cosmology"])
    z_nz, nz = source_nz(sims["nz"])
    cards: dict[str, Any] = {
        "NSIDE": int(sims["nside"]),
        **cosmo.header_cards(),
        "NZSRC": sims["nz"],
        "SIMSRC": sims["source"],
    }
    if sims["source"] == "lognormal":
        seed = derive_seed(config["seed"], "sims", index)
        kappa, z_edges, source_cards = _lognormal_sky(sims, index, seed, cosmo, z_nz, nz)
    else:
        seed = None
        kappa, z_edges, source_cards = _shell_sky(sims, index, cosmo, z_nz, nz)
    cards.update(source_cards)
    cards.update(NSHELLS=len(z_edges) - 1, SHZMIN=float(z_edges[0]), SHZMAX=float(z_edges[-1]))
    kappa = kappa.astype(np.float32)
    write_healpix(
        output,
        kappa,
        names=[f"BIN{b + 1}" for b in range(kappa.shape[0])],
        header=provenance(config, seed=seed, **cards),
    )
    log.info(
        "sky %d written to %s in %.1f s; kappa std per bin %s",
        index,
        output,
        time.perf_counter() - start,
        np.array2string(kappa.std(axis=1), precision=4),
    )
    return kappa
