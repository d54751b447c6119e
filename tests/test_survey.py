"""DES-Y3 n(z): the built-in parametric fit against the released table, and n(z) readers."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from astropy.io import fits

from kappadiff import sims, survey
from kappadiff.products import ProductError


@functools.cache
def _model() -> sims.LensingCosmology:
    return sims.lensing_cosmology(sims.Cosmology(), zmax=3.0)


def test_desy3_nz_is_a_normalised_density():
    assert np.all(survey.desy3_nz(np.array([-1.0, -1e-9])) == 0)
    z = np.linspace(0.0, 8.0, 16001)
    nz = survey.desy3_nz(z)
    assert nz.shape == (4, z.size) and np.all(nz >= 0)
    # the normalisation is analytic; 1e-6 bounds the trapezoid error at dz = 5e-4
    np.testing.assert_allclose(np.trapezoid(nz, z, axis=1), 1.0, atol=1e-6)


def test_desy3_nz_fit_matches_released_table(shared_data):
    table = np.loadtxt(shared_data / "desy3_source_nz.txt")
    z, released = table[:, 0], np.clip(table[:, 1:].T, 0.0, None)
    fit = survey.desy3_nz(z)
    mean = (released * z).sum(axis=1) / released.sum(axis=1)
    mean_fit = (fit * z).sum(axis=1) / fit.sum(axis=1)
    # the README quotes these means; the fit must keep them to 0.01 (the task's tolerance)
    np.testing.assert_allclose(mean, [0.336, 0.521, 0.741, 0.936], atol=1e-3)
    np.testing.assert_allclose(mean_fit, mean, atol=0.01)

    # Limber spectra from the fit and from the table, same cosmology: the fit keeps the
    # lensing efficiency, so the spectra agree to 2% over the analysis range (0.9% found)
    model = _model()
    ell = np.geomspace(30, 2048, 25)
    cl_fit = sims.limber_kappa_cls(model, z, fit, ell, n_chi=400)
    cl_table = sims.limber_kappa_cls(model, z, released, ell, n_chi=400)
    np.testing.assert_allclose(cl_fit / cl_table, 1.0, atol=0.02)


def _write_2pt(path, z, nz, hdu_name="NZ_SOURCE"):
    cols = [fits.Column(name="Z_LOW", format="D", array=z - 0.005)]
    cols.append(fits.Column(name="Z_MID", format="D", array=z))
    cols.append(fits.Column(name="Z_HIGH", format="D", array=z + 0.005))
    cols += [fits.Column(name=f"BIN{i + 1}", format="D", array=n) for i, n in enumerate(nz)]
    table = fits.BinTableHDU.from_columns(cols, name=hdu_name)
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)


def test_read_nz_text_and_2pt_fits_agree(tmp_path):
    z = np.arange(0.005, 3.0, 0.01)
    nz = survey.desy3_nz(z) * 0.01  # histogram values, as released
    text = tmp_path / "nz.txt"
    np.savetxt(text, np.column_stack([z, nz.T]), header="z n1 n2 n3 n4")
    fits_path = tmp_path / "2pt.fits"
    _write_2pt(fits_path, z, nz)
    z_t, nz_t = survey.read_nz(text)
    z_f, nz_f = survey.read_nz(fits_path)
    np.testing.assert_allclose(z_t, z)
    np.testing.assert_allclose(z_f, z)
    # both normalised densities; text round trip loses digits at 1e-8 relative (savetxt %.18e)
    np.testing.assert_allclose(nz_t, nz_f, rtol=1e-10)
    np.testing.assert_allclose(np.trapezoid(nz_f, z, axis=1), 1.0, rtol=1e-12)
    # the shape is the built-in one up to the normalisation over the truncated range
    np.testing.assert_allclose(nz_f / nz_f.max(axis=1)[:, None], (nz / nz.max(1)[:, None]))


def test_read_nz_zeroes_small_negatives_and_logs(tmp_path, caplog):
    z = np.linspace(0.0, 2.0, 201)
    nz = survey.desy3_nz(z)
    nz[0, -5:] = -1e-4 * nz[0].max()
    path = tmp_path / "nz.txt"
    np.savetxt(path, np.column_stack([z, nz.T]))
    _, back = survey.read_nz(path)
    assert np.all(back >= 0)
    assert "5 small negative n(z) values" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda z, nz: nz.__setitem__((1, 50), -0.5 * nz[1].max()), "bin 2 has 1 negative"),
        (lambda z, nz: nz.__setitem__(2, 0.0), "bin 3 is zero"),
        (lambda z, nz: z.__setitem__(10, z[9]), "strictly increasing"),
        (lambda z, nz: nz.__setitem__((0, 3), np.nan), "non-finite"),
    ],
)
def test_read_nz_rejects_bad_tables_naming_the_file(tmp_path, edit, message):
    z = np.linspace(0.0, 2.0, 201)
    nz = survey.desy3_nz(z)
    edit(z, nz)
    path = tmp_path / "bad.txt"
    np.savetxt(path, np.column_stack([z, nz.T]))
    with pytest.raises(survey.NzError, match=message) as err:
        survey.read_nz(path)
    assert str(path) in str(err.value)


def test_read_nz_fits_without_nz_source(tmp_path):
    path = tmp_path / "2pt.fits"
    z = np.linspace(0.01, 2.0, 100)
    _write_2pt(path, z, survey.desy3_nz(z), hdu_name="NZ_LENS")
    with pytest.raises(survey.NzError, match="no HDU 'nz_source'") as err:
        survey.read_nz(path)
    assert str(path) in str(err.value)


def test_read_nz_names_a_truncated_fits_file(tmp_path):
    """A 2pt FITS file cut inside its table: the error names it (astropy names no file)."""
    path = tmp_path / "2pt.fits"
    z = np.linspace(0.01, 2.0, 100)
    _write_2pt(path, z, survey.desy3_nz(z))
    path.write_bytes(path.read_bytes()[:-1500])  # inside the table data
    with pytest.raises(ProductError, match=r"2pt\.fits") as err:
        survey.read_nz(path)
    assert str(path) in str(err.value)
