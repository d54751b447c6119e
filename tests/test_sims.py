"""Simulated skies: Born weights, Limber spectra, lognormal convergence maps, shear."""

from __future__ import annotations

import functools

import healpy as hp
import numpy as np
import pytest
import yaml
from scipy.integrate import quad

from kappadiff import sims, survey
from kappadiff.products import read_healpix
from kappadiff.stages.sims import make_tomography

NSIDE = 128
LMAX = 2 * NSIDE
N_SKIES = 4
ELL_EDGES = (30, 64, NSIDE + 1)


@functools.cache
def _model() -> sims.LensingCosmology:
    return sims.lensing_cosmology(sims.Cosmology(), zmax=3.0)


@functools.cache
def _skies():
    """Four lognormal skies at nside 128 with the built-in n(z), and their inputs."""
    model = _model()
    z = np.linspace(0.0, 3.0, 301)
    nz = survey.desy3_nz(z)
    edges = sims.shell_edges(model, 3.0, 150.0)
    maps = [
        sims.lognormal_kappa(model, edges, z, nz, NSIDE, LMAX, np.random.default_rng(seed))
        for seed in range(N_SKIES)
    ]
    return z, nz, edges, maps


def test_shell_edges_are_equal_in_comoving_distance_beyond_the_nearest():
    model = _model()
    edges = sims.shell_edges(model, 3.0, 150.0)
    chi = model.comoving_distance(edges)
    assert edges[0] == 0.0 and edges[-1] == 3.0
    near = chi <= 300.0 + 1e-6
    # interpolation on the 0.002-step z table: edges are placed to 1e-3 relative in χ
    np.testing.assert_allclose(np.diff(chi[near]), 50.0, rtol=1e-3)
    far = np.diff(chi[~near | (chi == chi[near][-1])])
    assert len(edges) - 1 == 6 + len(far) and len(far) == int(np.ceil((chi[-1] - 300) / 150))
    np.testing.assert_allclose(far, far.mean(), rtol=1e-3)
    assert 140.0 < far.mean() <= 150.0


def test_shell_discretisation_bias_is_small():
    """Born sum of shells vs continuous Limber, same P(k): the shells' own error."""
    model = _model()
    z = np.linspace(0.0, 3.0, 301)
    nz = survey.desy3_nz(z)
    edges = sims.shell_edges(model, 3.0, 150.0)
    ell = np.array([30, 100, 300, 1000])
    weights = sims.born_weights(model, edges, z, nz)
    shells = np.einsum(
        "is,js,sl->ijl", weights, weights, sims.shell_matter_cls(model, edges, 1000)[:, ell]
    )
    # 0.3% found; 1% keeps it a small part of the 5% map test
    np.testing.assert_allclose(shells / sims.limber_kappa_cls(model, z, nz, ell), 1.0, atol=0.01)


def test_born_weights_match_brute_force_single_source_plane():
    """A narrow n(z) at z_s: W_s = 3/2 Ω_m (H0/c)² ∫_shell χ (1+z) (1 − χ/χ_s) dχ."""
    model = _model()
    z = np.linspace(0.0, 3.0, 3001)
    z_s = 1.0
    nz = np.exp(-0.5 * ((z - z_s) / 0.005) ** 2)[None]
    edges = np.array([0.0, 0.2, 0.5, 0.9, 1.5, 2.0])
    weights = sims.born_weights(model, edges, z, nz)[0]
    chi_s = model.comoving_distance(z_s)
    pref = 1.5 * 0.3 * (70.0 / sims.C_KMS) ** 2

    def integrand(chi):
        return pref * chi * (1 + model.redshift(chi)) * max(0.0, 1.0 - chi / chi_s)

    chi_edges = model.comoving_distance(edges)
    expected = [
        quad(integrand, a, b, limit=200)[0]
        for a, b in zip(chi_edges[:-1], chi_edges[1:], strict=True)
    ]
    # shells in front of the source: the trapezoid sum is exact to 1e-3 (1e-4 found)
    np.testing.assert_allclose(weights[:3], expected[:3], rtol=1e-3)
    # the shell holding the source: only its near 0.1 in z counts, and the 0.005-wide
    # n(z) smears the kink at χ_s over a tenth of that; 5e-3 (2e-3 found)
    np.testing.assert_allclose(weights[3], expected[3], rtol=5e-3)
    assert weights[4] == pytest.approx(expected[4], abs=1e-6 * weights.max())


def test_shell_matter_cls_converge_in_the_nodes():
    model = _model()
    edges = sims.shell_edges(model, 3.0, 150.0)
    cls = sims.shell_matter_cls(model, edges, 512)
    nodes = sims._shell_nodes
    try:
        sims._shell_nodes = lambda m, z: nodes(m, z, 64)
        fine = sims.shell_matter_cls(model, edges, 512)
    finally:
        sims._shell_nodes = nodes
    # smooth integrands: 16 nodes give 1e-4 (3e-5 found); the shell at χ = 0 has a
    # χ^(-1/2) integrand (handled by a change of variable) and k far beyond CAMB's range:
    # 2e-2 (1.2% found), harmless as it makes < 1% of any bin's C_ℓ (0.7% found)
    np.testing.assert_allclose(cls[1:], fine[1:], rtol=1e-4)
    np.testing.assert_allclose(cls[0], fine[0], rtol=2e-2)
    z = np.linspace(0.0, 3.0, 301)
    weights = sims.born_weights(model, edges, z, survey.desy3_nz(z))
    share = weights[:, :1] ** 2 * cls[:1] / np.einsum("is,sl->il", weights**2, cls)
    assert np.all(share[:, 30:] < 0.01)


def test_limber_kernels_agree_with_camb_lensing_windows():
    """CAMB's own Limber lensing spectra (its kernels, its integration), same n(z)."""
    import camb

    model = _model()
    z = np.linspace(0.0, 3.0, 301)
    nz = survey.desy3_nz(z)
    pars = sims._camb_parameters(sims.Cosmology())
    pars.NonLinear = camb.model.NonLinear_both
    pars.SourceWindows = [
        camb.sources.SplinedSourceWindow(source_type="lensing", z=z, W=n) for n in nz[[0, 3]]
    ]
    pars.set_for_lmax(160, lens_potential_accuracy=1)
    pars.SourceTerms.limber_windows = True
    pars.SourceTerms.limber_phi_lmin = 10
    pars.Want_CMB = False
    camb_cls = camb.get_results(pars).get_source_cls_dict(lmax=150, raw_cl=True)
    ell = np.array([30, 60, 100, 150])
    ours = sims.limber_kappa_cls(model, z, nz[[0, 3]], ell)
    # independent integrations of the same kernels: 0.3% found, 1% allowed
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(ours[i, j], camb_cls[f"W{i + 1}xW{j + 1}"][ell], rtol=1e-2)


def test_limber_spectra_have_reference_amplitude(shared_data):
    """Order-of-magnitude check against the reference theory spectra (other cosmology)."""
    reference = np.load(shared_data / "desy3_kappa_cl.npy")
    z = np.linspace(0.0, 3.0, 301)
    ell = np.array([30, 100, 300, 1000])
    ours = sims.limber_kappa_cls(_model(), z, survey.desy3_nz(z), ell, n_chi=400)
    # the reference data are good to about ±30% (README); 1.1-1.25 found here
    np.testing.assert_allclose(ours / reference[:, :, ell], 1.0, atol=0.35)


def test_lognormal_kappa_spectra_match_limber():
    """Auto- and cross-spectra of the maps vs the continuous Limber prediction, 5%."""
    z, nz, _, maps = _skies()
    ell = np.arange(LMAX + 1)
    prediction = sims.limber_kappa_cls(_model(), z, nz, ell)
    measured = np.zeros((4, 4, LMAX + 1))
    for kappa in maps:
        alms = [hp.map2alm(k, lmax=LMAX, iter=3, use_pixel_weights=False) for k in kappa]
        for i in range(4):
            for j in range(i, 4):
                measured[i, j] += hp.alm2cl(alms[i], alms[j]) / len(maps)
                measured[j, i] = measured[i, j]
    # two wide ℓ bins over 30 <= ℓ <= nside; with 4 skies the Gaussian cosmic variance of
    # the band powers is 1.3% and 0.6%, so 5% tests the shells, lognormal and Born weights
    weight = 2 * ell + 1
    for lo, hi in zip(ELL_EDGES[:-1], ELL_EDGES[1:], strict=True):
        band = slice(lo, hi)
        ratio = (measured[..., band] * weight[band]).sum(-1) / (
            prediction[..., band] * weight[band]
        ).sum(-1)
        np.testing.assert_allclose(ratio, 1.0, atol=0.05, err_msg=f"ell {lo}-{hi - 1}")


def test_lognormal_kappa_is_positively_skewed_with_zero_mean():
    _, _, _, maps = _skies()
    for kappa in maps:
        mean = kappa.mean(axis=1)
        std = kappa.std(axis=1)
        skew = ((kappa - mean[:, None]) ** 3).mean(axis=1) / std**3
        # the monopole of a band-limited field is one Gaussian number of variance C_0/4π,
        # far below the pixel rms: 5% of the rms is generous
        assert np.all(np.abs(mean) < 0.05 * std)
        # lognormal matter shells give a skewed κ, strongest at low z (0.3-1 at nside 128)
        assert np.all(skew > 0.2)
        assert skew[0] > skew[3]


def test_born_kappa_checks_its_shells():
    weights = np.ones((2, 3))
    maps = [np.ones(12), np.ones(12), np.ones(12)]
    kappa = sims.born_kappa(enumerate(maps), weights)
    np.testing.assert_array_equal(kappa, 3.0)
    with pytest.raises(ValueError, match="1 of 3 shells were not given"):
        sims.born_kappa(enumerate(maps[:2]), weights)
    with pytest.raises(ValueError, match="given twice"):
        sims.born_kappa([(0, maps[0]), (0, maps[1]), (2, maps[2])], weights)
    with pytest.raises(ValueError, match="has 48 pixels"):
        sims.born_kappa([(0, maps[0]), (1, np.ones(48)), (2, maps[2])], weights)


def test_nz_without_overlap_with_the_shells_is_an_error():
    z = np.linspace(0.0, 3.0, 301)
    nz = survey.desy3_nz(z)
    nz[2] = np.where(z > 2.5, 1.0, 0.0)
    edges = np.array([0.0, 0.5, 1.0, 1.5])
    with pytest.raises(survey.NzError, match=r"my_nz.txt: n\(z\) of bin\(s\) 3 has no overlap"):
        sims.check_nz_overlap(edges, z, nz, "my_nz.txt")
    fraction = sims.check_nz_overlap(np.array([0.0, 3.0]), z, survey.desy3_nz(z), "builtin")
    np.testing.assert_allclose(fraction, 1.0)


def test_shear_from_kappa_is_the_e_mode_with_glass_sign(rng):
    nside, lmax = 64, 128
    # a Gaussian sky drawn from the seeded generator (hp.synfast draws from numpy's global
    # state, so the sky, and the quadrature error below, would change from run to run)
    ell_of, m_of = hp.Alm.getlm(lmax)
    amp = np.sqrt(1e-4 / (1.0 + ell_of) ** 2 / np.where(m_of == 0, 1.0, 2.0))
    alm = amp * (
        rng.normal(size=amp.size) + 1j * np.where(m_of == 0, 0.0, rng.normal(size=amp.size))
    )
    kappa = hp.alm2map(alm, nside, lmax=lmax)
    g1, g2 = sims.shear_from_kappa(kappa, lmax=lmax)
    elm, blm = hp.map2alm_spin([g1, g2], 2, lmax=lmax)
    klm = hp.map2alm(kappa, lmax=lmax, iter=3)
    ell = np.arange(lmax + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(ell >= 2, -np.sqrt((ell + 2) * (ell - 1) / (ell * (ell + 1))), 0)
    expected = hp.almxfl(klm, factor)
    # synthesis then analysis of band-limited maps at lmax = 2 nside: quadrature errors of
    # about 1e-3 of the largest E coefficient (up to 1.5e-3 over 20 synfast skies); a sign
    # or rotation error of the spin-2 convention would put O(1) of it into E - expected or B
    scale = np.abs(expected).max()
    assert np.abs(elm - expected).max() < 3e-3 * scale
    assert np.abs(blm).max() < 3e-3 * scale


def test_shear_around_a_kappa_peak_follows_the_convention():
    """Positive κ peak: γ1 > 0 north and south, < 0 east and west; γ2 < 0 to the NE."""
    nside = 128
    vec = hp.ang2vec(90.0, 0.0, lonlat=True)  # on the equator, RA = 90 deg
    kappa = np.zeros(12 * nside**2)
    kappa[hp.query_disc(nside, vec, np.radians(0.5))] = 1.0
    kappa = hp.smoothing(kappa, fwhm=np.radians(1.0), use_pixel_weights=False)
    g1, g2 = sims.shear_from_kappa(kappa)
    offset = 2.0  # degrees from the peak
    at = {
        "N": (90.0, offset),
        "S": (90.0, -offset),
        "E": (90.0 + offset, 0.0),
        "W": (90.0 - offset, 0.0),
        "NE": (90.0 + offset, offset),
    }
    pix = {k: hp.ang2pix(nside, ra, dec, lonlat=True) for k, (ra, dec) in at.items()}
    assert g1[pix["N"]] > 0 and g1[pix["S"]] > 0
    assert g1[pix["E"]] < 0 and g1[pix["W"]] < 0
    # DES e2 = −γ2 > 0 to the north-east (DESIGN.md conventions)
    assert g2[pix["NE"]] < 0
    g1_both, _ = sims.shear_from_kappa(np.stack([kappa, 2 * kappa]))
    np.testing.assert_allclose(g1_both[1], 2 * g1, rtol=1e-10, atol=1e-15)


def test_make_tomography_writes_the_product(tmp_path, repo_root):
    config = yaml.safe_load((repo_root / "config" / "test.yaml").read_text())
    config["sims"]["nside"] = 32
    out = tmp_path / "sims" / "sim001" / "kappa.fits"
    written = make_tomography(config, 1, out)
    maps, header = read_healpix(out)
    np.testing.assert_array_equal(maps, written)
    assert maps.shape == (4, 12 * 32**2)
    assert header["NSIDE"] == 32 and header["ORDERING"] == "RING"
    assert header["COORDSYS"] == "C"
    assert header["H0"] == 70.0 and header["OMEGAM"] == 0.3 and header["SIGMA8"] == 0.8
    assert header["NZSRC"] == "builtin" and header["SIMSRC"] == "lognormal"
    assert (
        header["SEED"] > 0 and header["NSHELLS"] == len(sims.shell_edges(_model(), 3.0, 300.0)) - 1
    )
    # the seed is a pure function of (config seed, sky): a rerun is identical, another sky not
    again = make_tomography(config, 1, tmp_path / "again.fits")
    np.testing.assert_array_equal(again, written)
    other = make_tomography(config, 0, tmp_path / "other.fits")
    assert np.corrcoef(other[0], written[0])[0, 1] < 0.2
