"""Simulated skies: matter shells to tomographic convergence (Born), and full-sky shear.

The chain is the one of the paper's training set (Boruah et al. 2025, Sec. 3.1), with
lognormal matter shells standing in for PKDGRAV3 lightcones when no N-body shells are given:

1. the cosmology gives distances and the nonlinear matter power spectrum (CAMB, halofit);
2. the line of sight up to ``zmax`` is cut into shells of equal comoving thickness, and
   each shell's angular matter spectrum is the Limber integral of P(k, z) over it;
3. GLASS draws correlated lognormal HEALPix maps of the shells' overdensity δ_s;
4. the Born approximation sums the shells with the lensing efficiency of each source bin,
   κ_b = Σ_s W_bs δ_s (Eq. :func:`born_weights`).

N-body shells (:mod:`kappadiff.shells`) enter at step 4. The Limber prediction of the
convergence spectra (:func:`limber_kappa_cls`) integrates the continuous lensing kernels
instead of the shells, so comparing it with maps tests steps 2-4.

Units: comoving distances in Mpc (not Mpc/h), wavenumbers in 1/Mpc, P(k) in Mpc^3.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import healpy as hp
import numpy as np

from .survey import NzError

__all__ = [
    "C_KMS",
    "Cosmology",
    "LensingCosmology",
    "born_kappa",
    "born_weights",
    "check_nz_overlap",
    "lensing_cosmology",
    "lensing_efficiency",
    "limber_kappa_cls",
    "lognormal_gaussian_cls",
    "lognormal_kappa",
    "lognormal_shells",
    "shear_from_kappa",
    "shell_edges",
    "shell_matter_cls",
]

log = logging.getLogger(__name__)

#: Speed of light, km/s.
C_KMS = 299792.458
#: Gauss-Legendre nodes per shell for the Limber integral of P(k) over a shell's thickness
#: (a smooth integrand: 16 nodes agree with 64 to 1e-4, and to 2e-2 for the shell at
#: χ = 0, which makes < 1% of the convergence power; tests/test_sims.py).
SHELL_NODES = 16
#: The nearest 2 x shell_dchi of the lognormal shells are cut this many times finer.
NEAR_SPLIT = 3
#: Points of the χ grid on which the lensing efficiency is integrated over the shells.
BORN_GRID = 4096


@dataclasses.dataclass(frozen=True)
class Cosmology:
    """Flat ΛCDM with massive neutrinos, the parameters of the Gower Street simulations.

    Attributes
    ----------
    h : float
        H0 / (100 km/s/Mpc).
    omega_m : float
        Total matter density today (CDM + baryons + massive neutrinos).
    omega_b : float
        Baryon density today.
    n_s : float
        Scalar spectral index.
    sigma8 : float
        Linear rms matter fluctuation in 8 Mpc/h spheres today.
    m_nu : float
        Sum of neutrino masses, eV (one massive eigenstate).
    """

    h: float = 0.7
    omega_m: float = 0.3
    omega_b: float = 0.045
    n_s: float = 0.96
    sigma8: float = 0.8
    m_nu: float = 0.06

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Cosmology:
        """Build from the ``sims.cosmology`` config section (keys as the attributes)."""
        return cls(**{f.name: float(section[f.name]) for f in dataclasses.fields(cls)})

    def header_cards(self) -> dict[str, float]:
        """FITS cards recording the cosmology (H0 in km/s/Mpc)."""
        return {
            "H0": 100.0 * self.h,
            "OMEGAM": self.omega_m,
            "OMEGAB": self.omega_b,
            "NS": self.n_s,
            "SIGMA8": self.sigma8,
            "MNU": self.m_nu,
        }


@dataclasses.dataclass(frozen=True)
class LensingCosmology:
    """Distances and nonlinear matter power of a :class:`Cosmology`, tabulated up to ``zmax``.

    Attributes
    ----------
    cosmology : Cosmology
        The parameters.
    z, chi : ndarray, shape (n,)
        Redshift grid and comoving distance to it, Mpc.
    power : object
        CAMB ``MatterPowerInterpolator`` of the nonlinear total-matter P(k, z), Mpc^3,
        k in 1/Mpc, extrapolated as a power law beyond the computed k range.
    """

    cosmology: Cosmology
    z: np.ndarray
    chi: np.ndarray
    power: Any

    def comoving_distance(self, z: np.ndarray) -> np.ndarray:
        """Comoving distance χ(z), Mpc."""
        return np.interp(z, self.z, self.chi)

    def redshift(self, chi: np.ndarray) -> np.ndarray:
        """Redshift z(χ) at comoving distance ``chi`` (Mpc)."""
        return np.interp(chi, self.chi, self.z)

    def matter_power(self, k: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Nonlinear P(k, z) in Mpc^3 at matching arrays ``k`` (1/Mpc) and ``z``."""
        k, z = np.broadcast_arrays(np.asarray(k, float), np.asarray(z, float))
        return self.power.P(z.ravel(), k.ravel(), grid=False).reshape(k.shape)


def _camb_parameters(cosmo: Cosmology):
    """CAMB parameters of ``cosmo`` with A_s set so that σ8 matches."""
    import camb

    h2 = cosmo.h**2
    pars = camb.CAMBparams()
    # CAMB's omch2 excludes neutrinos: Ω_ν h² = Σm_ν / 93.14 eV (one massive state)
    omnuh2 = cosmo.m_nu / 93.14
    pars.set_cosmology(
        H0=100.0 * cosmo.h,
        ombh2=cosmo.omega_b * h2,
        omch2=(cosmo.omega_m - cosmo.omega_b) * h2 - omnuh2,
        mnu=cosmo.m_nu,
        num_massive_neutrinos=1 if cosmo.m_nu > 0 else 0,
    )
    as_trial = 2.0e-9
    pars.InitPower.set_params(ns=cosmo.n_s, As=as_trial)
    pars.set_matter_power(redshifts=[0.0], kmax=2.0)
    pars.NonLinear = camb.model.NonLinear_none
    sigma8_trial = camb.get_results(pars).get_sigma8_0()
    # linear power scales with A_s, so σ8 scales with its square root
    pars.InitPower.set_params(ns=cosmo.n_s, As=as_trial * (cosmo.sigma8 / sigma8_trial) ** 2)
    return pars


@functools.lru_cache(maxsize=4)
def lensing_cosmology(cosmo: Cosmology, zmax: float = 3.5, kmax: float = 50.0) -> LensingCosmology:
    """Tabulate distances and the nonlinear (halofit) matter power spectrum with CAMB.

    Results are cached per (cosmology, zmax, kmax): CAMB takes seconds, and a process
    making several skies of one cosmology needs it once. Do not modify the arrays.

    Parameters
    ----------
    cosmo
        Cosmological parameters.
    zmax
        Largest redshift needed (shells and sources).
    kmax
        Largest wavenumber computed by CAMB, 1/Mpc; P(k) is extrapolated as a power law
        beyond it (needed only where Limber maps small χ to large k, whose weight is tiny).

    Returns
    -------
    LensingCosmology
    """
    import camb

    pars = _camb_parameters(cosmo)
    pars.NonLinear = camb.model.NonLinear_both
    power = camb.get_matter_power_interpolator(
        pars,
        nonlinear=True,
        hubble_units=False,
        k_hunit=False,
        kmax=kmax,
        zmax=zmax,
        extrap_kmax=1e5,
        var1="delta_tot",
        var2="delta_tot",
    )
    background = camb.get_background(pars)
    z = np.linspace(0.0, zmax, int(np.ceil(zmax / 0.002)) + 1)
    chi = np.asarray(background.comoving_radial_distance(z))
    return LensingCosmology(cosmology=cosmo, z=z, chi=chi, power=power)


def shell_edges(model: LensingCosmology, zmax: float, dchi: float) -> np.ndarray:
    """Redshift edges of the matter shells from z = 0 to ``zmax``.

    Parameters
    ----------
    model
        Distances.
    zmax
        Far edge of the last shell.
    dchi
        Shell thickness, Mpc. The nearest 2 ``dchi`` are cut into :data:`NEAR_SPLIT` times
        thinner shells; beyond, the shells are equal in comoving distance, about ``dchi``
        thick.

    Returns
    -------
    ndarray, shape (n_shell + 1,)
        Increasing redshifts, 0 first and ``zmax`` last.

    Notes
    -----
    A shell stands for the mean δ along its thickness, so the Born sum misses the
    variation of the lensing kernel q(χ) and of P(ℓ/χ)/χ² across it. Both vary fastest
    near the observer: with 150 Mpc shells throughout, the lowest bin's C_ℓ is 3% high at
    ℓ = 30; with the nearest 300 Mpc in 50 Mpc shells, 0.2% (4 more shells).
    """
    if zmax > model.z[-1]:
        raise ValueError(f"zmax = {zmax} is beyond the tabulated z <= {model.z[-1]}")
    chi_max = float(model.comoving_distance(zmax))
    near = min(2.0 * dchi, chi_max)
    n_near = max(1, int(np.ceil(NEAR_SPLIT * near / dchi)))
    n_far = int(np.ceil((chi_max - near) / dchi))
    chi = np.concatenate(
        [np.linspace(0.0, near, n_near + 1), np.linspace(near, chi_max, n_far + 1)[1:]]
    )
    z = model.redshift(chi)
    z[0], z[-1] = 0.0, zmax
    return z


def _shell_nodes(model: LensingCosmology, z_edges: np.ndarray, n: int = SHELL_NODES):
    """Gauss-Legendre nodes χ [n_shell, n] and weights (summing to Δχ) inside each shell.

    A shell starting at χ = 0 takes the nodes in t = √(χ/χ_hi): its Limber integrand
    behaves as χ^(-1/2) there, which is smooth in t.
    """
    x, w = np.polynomial.legendre.leggauss(n)
    chi_edges = model.comoving_distance(z_edges)
    lo, hi = chi_edges[:-1, None], chi_edges[1:, None]
    chi = lo + (hi - lo) * (x + 1.0) / 2.0
    weight = (hi - lo) * w / 2.0
    if chi_edges[0] == 0.0:
        t = (x + 1.0) / 2.0
        chi[0] = hi[0] * t**2
        weight[0] = hi[0] * t * w
    return chi, weight


def lensing_efficiency(
    model: LensingCosmology, z_nz: np.ndarray, nz: np.ndarray, chi: np.ndarray
) -> np.ndarray:
    """Lensing efficiency q_b(χ) of source distributions n_b(z).

    Parameters
    ----------
    model
        Distances.
    z_nz : ndarray, shape (nz,)
        Redshift grid of the n(z), within the tabulated range of ``model``.
    nz : ndarray, shape (n_bin, nz)
        Source redshift densities; normalised here by their trapezoid integral.
    chi : ndarray
        Comoving distances, Mpc, any shape.

    Returns
    -------
    ndarray, shape (n_bin, *chi.shape)
        q_b(χ) in 1/Mpc, such that κ_b = ∫ dχ q_b(χ) δ(χ n̂, z(χ)) (Born approximation).

    Notes
    -----
    q_b(χ) = (3/2) Ω_m (H0/c)² χ (1 + z(χ)) ∫ dz' n_b(z') (1 − χ/χ(z')) Θ(χ(z') − χ)
    (e.g. Kilbinger 2015, Eq. 22, for a flat universe).
    """
    if z_nz[-1] > model.z[-1]:
        raise ValueError(f"n(z) reaches z = {z_nz[-1]}, beyond the tabulated {model.z[-1]}")
    cosmo = model.cosmology
    nz = np.asarray(nz, float)
    nz = nz / np.trapezoid(nz, z_nz, axis=1)[:, None]
    chi = np.asarray(chi, float)
    flat = chi.reshape(-1)
    chi_s = model.comoving_distance(z_nz)
    integral = np.empty((nz.shape[0], flat.size))
    # blocks of χ bound the [bin, χ, z] temporary to ~32 MB
    block = max(1, 2**22 // (nz.shape[0] * z_nz.size))
    for start in range(0, flat.size, block):
        x = flat[start : start + block, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            geometry = np.where(chi_s > x, 1.0 - x / chi_s, 0.0)
        integral[:, start : start + block] = np.trapezoid(nz[:, None, :] * geometry, z_nz, axis=-1)
    prefactor = 1.5 * cosmo.omega_m * (100.0 * cosmo.h / C_KMS) ** 2
    q = prefactor * flat * (1.0 + model.redshift(flat)) * integral
    return q.reshape(nz.shape[0], *chi.shape)


def born_weights(
    model: LensingCosmology, z_edges: np.ndarray, z_nz: np.ndarray, nz: np.ndarray
) -> np.ndarray:
    """Born weights of shells: W_bs = ∫_shell dχ q_b(χ).

    Parameters
    ----------
    model
        Distances.
    z_edges : ndarray, shape (n_shell + 1,)
        Increasing shell edges in redshift (adjacent shells; gaps are not allowed).
    z_nz, nz
        Source redshift distributions, as in :func:`lensing_efficiency`.

    Returns
    -------
    ndarray, shape (n_bin, n_shell)
        Dimensionless weights; κ_b = Σ_s W_bs δ_s where δ_s is the shell's mean overdensity
        along the line of sight (exact for δ constant across a shell).

    Notes
    -----
    q_b has a kink at every source redshift, so the integral is a trapezoid sum on a fine
    χ grid (:data:`BORN_GRID` points plus the shell edges) rather than a Gaussian
    quadrature per shell; its error is below 1e-4 of the weight.
    """
    chi_edges = model.comoving_distance(np.asarray(z_edges, float))
    grid = np.union1d(np.linspace(chi_edges[0], chi_edges[-1], BORN_GRID), chi_edges)
    q = lensing_efficiency(model, z_nz, nz, grid)
    cumulative = np.concatenate(
        [np.zeros((q.shape[0], 1)), np.cumsum((q[:, 1:] + q[:, :-1]) / 2 * np.diff(grid), axis=1)],
        axis=1,
    )
    return np.diff(cumulative[:, np.searchsorted(grid, chi_edges)], axis=1)


def check_nz_overlap(
    z_edges: np.ndarray, z_nz: np.ndarray, nz: np.ndarray, name: str
) -> np.ndarray:
    """Fraction of each n(z) inside the shells; an error where a bin has none.

    Parameters
    ----------
    z_edges : ndarray, shape (n_shell + 1,)
        Shell edges in redshift.
    z_nz, nz
        Source redshift distributions (``nz`` shape (n_bin, len(z_nz))).
    name
        Where the n(z) comes from (file name or 'builtin'), for messages.

    Returns
    -------
    ndarray, shape (n_bin,)
        ∫ n_b dz over [z_edges[0], z_edges[-1]] / ∫ n_b dz. Sources beyond the last shell
        miss the lensing by matter between it and them; a warning is logged where more
        than 1% of a bin lies there.

    Raises
    ------
    NzError
        Naming ``name``, the bins and the shell range, if a bin has no source within it.
    """
    nz = np.asarray(nz, float)
    total = np.trapezoid(nz, z_nz, axis=1)
    inside = (z_nz >= z_edges[0]) & (z_nz <= z_edges[-1])
    fraction = np.trapezoid(np.where(inside, nz, 0.0), z_nz, axis=1) / total
    empty = np.flatnonzero(fraction <= 0.0)
    if empty.size:
        raise NzError(
            f"{name}: n(z) of bin(s) {', '.join(str(b + 1) for b in empty)} has no overlap with "
            f"the shells at {z_edges[0]:.3f} < z < {z_edges[-1]:.3f}"
        )
    beyond = np.trapezoid(np.where(z_nz > z_edges[-1], nz, 0.0), z_nz, axis=1) / total
    for b in np.flatnonzero(beyond > 0.01):
        log.warning(
            "%s: %.1f%% of bin %d lies beyond the last shell (z = %.3f)",
            name,
            100 * beyond[b],
            b + 1,
            z_edges[-1],
        )
    return fraction


def limber_kappa_cls(
    model: LensingCosmology,
    z_nz: np.ndarray,
    nz: np.ndarray,
    ell: np.ndarray,
    n_chi: int = 1000,
) -> np.ndarray:
    """Limber convergence auto- and cross-spectra of source bins.

    Parameters
    ----------
    model
        Distances and P(k, z).
    z_nz, nz
        Source redshift distributions, as in :func:`lensing_efficiency`.
    ell : array_like, shape (n_ell,)
        Multipoles.
    n_chi
        Integration nodes in χ (Gauss-Legendre on [0, χ(z_max of n(z))]).

    Returns
    -------
    ndarray, shape (n_bin, n_bin, n_ell)
        C_ℓ^{κ_i κ_j}.

    Notes
    -----
    C_ℓ^{ij} = ∫ dχ q_i(χ) q_j(χ) / χ² P((ℓ + 1/2)/χ, z(χ)) (LoVerde & Afshordi 2008),
    with the continuous kernels of :func:`lensing_efficiency`, independent of any shells.
    """
    x, w = np.polynomial.legendre.leggauss(n_chi)
    chi_max = float(model.comoving_distance(z_nz[-1]))
    chi = chi_max * (x + 1.0) / 2.0
    w = w * chi_max / 2.0
    q = lensing_efficiency(model, z_nz, nz, chi)
    ell = np.asarray(ell, float)
    pk = model.matter_power((ell[:, None] + 0.5) / chi[None, :], model.redshift(chi)[None, :])
    kernel = q[:, None, :] * q[None, :, :] * (w / chi**2)
    return np.einsum("ijc,lc->ijl", kernel, pk)


def shell_matter_cls(model: LensingCosmology, z_edges: np.ndarray, lmax: int) -> np.ndarray:
    """Limber angular power spectra of the mean overdensity of each shell.

    Parameters
    ----------
    model
        Distances and P(k, z).
    z_edges : ndarray, shape (n_shell + 1,)
        Shell edges in redshift.
    lmax
        Largest multipole.

    Returns
    -------
    ndarray, shape (n_shell, lmax + 1)
        C_ℓ^{ss} = (1/Δχ_s²) ∫_shell dχ / χ² P((ℓ + 1/2)/χ, z(χ)), the spectrum of δ
        averaged uniformly in χ over the shell; in Limber, distinct shells are uncorrelated.
    """
    chi, w = _shell_nodes(model, np.asarray(z_edges, float))
    ell = np.arange(lmax + 1)
    pk = model.matter_power(
        (ell[None, None, :] + 0.5) / chi[..., None], model.redshift(chi)[..., None]
    )
    dchi = np.sum(w, axis=1)
    return np.sum(pk * (w / chi**2)[..., None], axis=1) / dchi[:, None] ** 2


def lognormal_gaussian_cls(shell_cls: np.ndarray, shift: float = 1.0) -> np.ndarray:
    """Spectra of the Gaussian fields whose lognormal transforms have ``shell_cls``.

    Parameters
    ----------
    shell_cls : ndarray, shape (n_shell, lmax + 1)
        Target angular spectra of the shells' δ (uncorrelated shells, as in Limber).
    shift
        Lognormal shift λ: δ ≥ −λ (1 for the matter density).

    Returns
    -------
    ndarray, shape (n_shell, lmax + 1)
        Gaussian C_ℓ, non-negative. They depend on the cosmology and shells only, so one
        solution serves every sky.

    Notes
    -----
    GLASS's iterative solution for a field that is not band-limited
    (``solve_gaussian_spectra``, Tessore et al. 2023, Sec. 3): the direct band-limited
    transform loses up to 4% of the κ power near ℓ = nside for the very nonlinear low-z
    shells (measured at nside 256, lmax 512). A Gaussian C_ℓ that still comes out
    negative is set to zero, and the count is logged.
    """
    import glass

    shell_cls = np.asarray(shell_cls, float)
    fields = [glass.grf.Lognormal(shift) for _ in shell_cls]
    gls = np.array([glass.solve_gaussian_spectra(fields[:1], [cl])[0] for cl in shell_cls])
    negative = gls < 0
    if np.any(negative):
        log.info("set %d negative Gaussian C_l of the lognormal shells to zero", negative.sum())
        gls[negative] = 0.0
    return gls


def lognormal_shells(
    gaussian_cls: np.ndarray, nside: int, rng: np.random.Generator, shift: float = 1.0
) -> Iterator[np.ndarray]:
    """Draw lognormal HEALPix maps of the shells' overdensity with GLASS.

    Parameters
    ----------
    gaussian_cls : ndarray, shape (n_shell, lmax + 1)
        Spectra of the underlying Gaussian fields (:func:`lognormal_gaussian_cls`).
    nside
        HEALPix resolution of the maps.
    rng
        Random generator (one per sky; never shared between skies).
    shift
        Lognormal shift λ, as given to :func:`lognormal_gaussian_cls`.

    Yields
    ------
    ndarray, shape (12 nside²,)
        δ of each shell in turn, RING ordering.

    Notes
    -----
    No pixel window is applied: the map values are point samples of the field, so no
    healpy data files are needed. The shells are uncorrelated, so GLASS keeps no earlier
    field (``ncorr=0``) and memory holds one shell at a time.
    """
    import glass

    fields = [glass.grf.Lognormal(shift) for _ in gaussian_cls]
    gls = [
        gaussian_cls[i] if j == i else np.zeros(0)
        for i in range(len(fields))
        for j in range(i, -1, -1)
    ]
    yield from glass.generate(fields, gls, nside, ncorr=0, rng=rng)


def born_kappa(shells: Iterable[tuple[int, np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """Born-approximation convergence κ_b = Σ_s W_bs δ_s.

    Parameters
    ----------
    shells : iterable of (int, ndarray)
        Pairs (s, δ_s): shell index (a column of ``weights``) and overdensity map, shape
        (npix,), in any order, every shell exactly once. They are consumed one at a time,
        so only one shell map is held in memory.
    weights : ndarray, shape (n_bin, n_shell)
        Born weights (:func:`born_weights`).

    Returns
    -------
    ndarray, shape (n_bin, npix)
        Convergence maps, float64.

    Raises
    ------
    ValueError
        If a shell is missing, repeated or out of range, or the maps differ in size.
    """
    weights = np.asarray(weights, float)
    n_bin, n_shell = weights.shape
    kappa = None
    seen = np.zeros(n_shell, dtype=bool)
    for s, delta in shells:
        if not 0 <= s < n_shell or seen[s]:
            raise ValueError(f"shell {s} is out of range 0..{n_shell - 1} or given twice")
        seen[s] = True
        if kappa is None:
            kappa = np.zeros((n_bin, delta.size))
            scratch = np.empty(delta.size)
        elif delta.size != kappa.shape[1]:
            raise ValueError(f"shell {s} has {delta.size} pixels, the others {kappa.shape[1]}")
        for b in range(n_bin):
            if weights[b, s] != 0.0:
                # one reused scratch map: no new full-size temporaries per shell and bin
                np.multiply(delta, weights[b, s], out=scratch)
                kappa[b] += scratch
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} of {n_shell} shells were not given")
    return kappa


def lognormal_kappa(
    model: LensingCosmology,
    z_edges: np.ndarray,
    z_nz: np.ndarray,
    nz: np.ndarray,
    nside: int,
    lmax: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One lognormal sky: tomographic Born convergence maps from lognormal matter shells.

    Parameters
    ----------
    model
        Distances and P(k, z).
    z_edges : ndarray, shape (n_shell + 1,)
        Shell edges (:func:`shell_edges`).
    z_nz, nz
        Source redshift distributions, ``nz`` shape (n_bin, len(z_nz)).
    nside, lmax
        HEALPix resolution and band limit of the shells.
    rng
        Random generator of this sky.

    Returns
    -------
    ndarray, shape (n_bin, 12 nside²)
        κ maps, RING ordering.
    """
    weights = born_weights(model, z_edges, z_nz, nz)
    gls = lognormal_gaussian_cls(shell_matter_cls(model, z_edges, lmax))
    return born_kappa(enumerate(lognormal_shells(gls, nside, rng)), weights)


def shear_from_kappa(kappa_map: np.ndarray, lmax: int | None = None) -> tuple[np.ndarray, ...]:
    """Full-sky E-mode shear of a convergence map (healpy spin-2, GLASS sign).

    Parameters
    ----------
    kappa_map : ndarray, shape (npix,) or (n_map, npix)
        Convergence, RING ordering.
    lmax
        Band limit of the transform; default 3 nside − 1.

    Returns
    -------
    g1, g2 : ndarray, each shaped like ``kappa_map``
        healpy's spin-2 components (not yet flipped to the DES convention).

    Notes
    -----
    γ_E,ℓm = −√((ℓ+2)(ℓ−1) / (ℓ(ℓ+1))) κ_ℓm, γ_B = 0 (Tessore et al. 2023, Sec. 4.2): light
    is deflected towards positive κ, so tangential shear around a κ peak is positive.
    The analysis uses three Jacobi iterations of ``map2alm`` and no pixel weights.
    """
    kappa_map = np.asarray(kappa_map, float)
    if kappa_map.ndim == 2:
        pairs = [shear_from_kappa(m, lmax) for m in kappa_map]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    nside = hp.npix2nside(kappa_map.size)
    if lmax is None:
        lmax = 3 * nside - 1
    alm = hp.map2alm(kappa_map, lmax=lmax, iter=3, use_pixel_weights=False)
    ell = np.arange(lmax + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(ell >= 2, -np.sqrt((ell + 2) * (ell - 1) / (ell * (ell + 1))), 0.0)
    elm = hp.almxfl(alm, factor)
    g1, g2 = hp.alm2map_spin([elm, np.zeros_like(elm)], nside, 2, lmax)
    return g1, g2
