"""Flat-sky summary statistics: spectra, ρ_c(ℓ), PDF and peaks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from kappadiff import lensing, stats
from kappadiff.stats.spectra import _binning

ROUNDOFF = 1e-12


def test_ell_bins_linear_are_all_populated():
    for shape, s in [((16, 16), 4.0), ((64, 64), 1.0), ((15, 20), 2.0)]:
        edges = stats.ell_bins_linear(*shape, s)
        ell, cl = stats.power_spectrum_flat(np.ones(shape), s, edges)
        assert ell.size == edges.size - 1
        assert np.all((ell >= edges[:-1]) & (ell < edges[1:]))


def test_empty_bins_are_an_error():
    edges = stats.ell_bins_linear(16, 16, 4.0)
    narrow = np.concatenate([edges[:1], [edges[0] * 1.0001], edges[1:]])
    with pytest.raises(ValueError, match="1 of .* ell bins hold no Fourier mode"):
        stats.power_spectrum_flat(np.zeros((16, 16)), 4.0, narrow)


def test_white_noise_power(rng):
    # white noise of variance v has C_ℓ = v Ω_pix at every ℓ
    n, s, v, n_maps = 32, 2.0, 0.3, 40
    maps = np.sqrt(v) * rng.normal(size=(n_maps, n, n))
    edges = stats.ell_bins_linear(n, n, s)
    ell, cl = stats.power_spectrum_flat(maps, s, edges)
    assert cl.shape == (n_maps, ell.size)
    expected = v * (s * lensing.ARCMIN) ** 2
    _, counts, _ = _binning((n, n), s, edges)
    # each mode's power is χ² with ~2 dof, pairs ±ℓ are equal: relative scatter of the mean
    # over N modes and maps is ~√(2/(N n_maps)); allow 5 of those
    scatter = np.sqrt(2.0 / (counts * n_maps))
    np.testing.assert_array_less(np.abs(cl.mean(axis=0) / expected - 1), 5 * scatter)


def test_power_of_a_field_with_known_spectrum(rng):
    # the spectrum measured by stats is the one lensing.signal_power_grid put in
    n, s, n_maps = 32, 4.0, 30
    ell_tab = np.geomspace(10, 1e5, 50)
    cl_tab = 1e-9 * (ell_tab / 1000.0) ** -1.0
    power = lensing.signal_power_grid(ell_tab, cl_tab, (n, n), s)
    maps = np.fft.ifft2(np.sqrt(power) * np.fft.fft2(rng.normal(size=(n_maps, n, n)))).real
    edges = stats.ell_bins_linear(n, n, s)[::3]
    ell, cl = stats.power_spectrum_flat(maps, s, edges)
    ell_grid = lensing.fourier_ell(n, n, s)
    index, counts, _ = _binning((n, n), s, edges)
    keep = index >= 0
    expected = (
        np.bincount(index[keep], weights=np.interp(ell_grid.ravel()[keep], ell_tab, cl_tab))
        / counts
    )
    scatter = np.sqrt(2.0 / (counts * n_maps))
    np.testing.assert_array_less(np.abs(cl.mean(axis=0) / expected - 1), 5 * scatter)


def test_cross_spectrum_properties(rng):
    n, s = 16, 2.0
    a, b = rng.normal(size=(2, 3, n, n))
    edges = stats.ell_bins_linear(n, n, s)
    _, cab = stats.cross_spectrum_flat(a, b, s, edges)
    _, cba = stats.cross_spectrum_flat(b, a, s, edges)
    _, caa = stats.power_spectrum_flat(a, s, edges)
    _, caa2 = stats.cross_spectrum_flat(a, a.copy(), s, edges)
    np.testing.assert_allclose(cab, cba, rtol=ROUNDOFF)
    np.testing.assert_allclose(caa2, caa, rtol=ROUNDOFF)
    # spectra are bilinear: C_{a, 2a+b} = 2 C_aa + C_ab
    _, mixed = stats.cross_spectrum_flat(a, 2 * a + b, s, edges)
    np.testing.assert_allclose(mixed, 2 * caa + cab, rtol=1e-10, atol=ROUNDOFF * caa.max())
    assert np.all(caa > 0)
    with pytest.raises(ValueError, match="shapes"):
        stats.cross_spectrum_flat(a, b[..., :-1], s, edges)


def test_correlation_coefficient(rng):
    n, s = 32, 2.0
    a, noise = rng.normal(size=(2, 20, n, n))
    edges = stats.ell_bins_linear(n, n, s)[::4]
    ell, rho = stats.correlation_coefficient(a, a, s, edges)
    np.testing.assert_allclose(rho, 1.0, rtol=0, atol=ROUNDOFF)
    _, rho = stats.correlation_coefficient(a, -3 * a, s, edges)
    np.testing.assert_allclose(rho, -1.0, rtol=0, atol=ROUNDOFF)
    # adding independent noise of equal power: ρ = 1/√2; averaged over 20 maps the
    # estimate scatters by < 0.05 in every bin holding >= 20 modes
    ell, rho = stats.correlation_coefficient(a, a + noise, s, edges, average_axes=0)
    assert rho.shape == ell.shape
    np.testing.assert_allclose(rho, 1 / np.sqrt(2), atol=0.05)
    with pytest.raises(ValueError, match="average_axes"):
        stats.correlation_coefficient(a, a, s, edges, average_axes=1)


def test_crossing_ell():
    ell = np.array([100.0, 200.0, 400.0, 800.0])
    rho = np.array(
        [
            [0.9, 0.7, 0.4, 0.2],  # crosses 2/3 of the way (in log ℓ) from 200 to 400
            [0.9, 0.8, 0.7, 0.6],  # never
            [0.4, 0.3, 0.2, 0.1],  # below from the start
        ]
    )
    out = stats.crossing_ell(ell, rho)
    assert out[0] == pytest.approx(200.0 * 2 ** (2 / 3), rel=ROUNDOFF)
    assert np.isnan(out[1])
    assert out[2] == 100.0
    assert stats.crossing_ell(ell, rho[0], level=0.8) == pytest.approx(100.0 * 2**0.5, rel=ROUNDOFF)


def test_pdf_of_gaussian_pixels(rng):
    maps = rng.normal(size=(2, 64, 64))
    maps[1] *= 2
    edges = np.linspace(-3, 3, 13)
    centres, density = stats.pdf(maps, edges)
    assert density.shape == (2, 12)
    widths = np.diff(edges)
    # 4096 pixels per map: the fraction in a bin of probability p has a binomial error
    # √(p(1−p)/4096); allow 5 of those per bin
    for k, scale in enumerate((1.0, 2.0)):
        prob = np.diff(norm.cdf(edges, scale=scale))
        err = np.sqrt(prob * (1 - prob) / 4096)
        np.testing.assert_array_less(np.abs(density[k] * widths - prob), 5 * err)
    assert np.sum(density[0] * widths) == pytest.approx(np.mean(np.abs(maps[0]) < 3), rel=1e-12)
    mask = np.zeros((64, 64))
    mask[:8] = 1
    _, masked = stats.pdf(maps, edges, mask=mask)
    _, direct = stats.pdf(maps[:, :8], edges)
    np.testing.assert_allclose(masked, direct, rtol=ROUNDOFF)


def test_find_peaks():
    m = np.zeros((10, 10))
    m[3, 3] = 2.0
    m[6, 7] = 1.0
    m[0, 5] = 5.0  # border: never a peak
    m[8, 2] = m[8, 3] = 1.0  # a plateau is not a strict maximum
    peaks = stats.find_peaks(m)
    assert set(zip(*np.nonzero(peaks), strict=True)) == {(3, 3), (6, 7)}
    mask = np.ones((10, 10))
    mask[7, 8] = 0  # touches the neighbourhood of (6, 7)
    peaks = stats.find_peaks(m, mask)
    assert set(zip(*np.nonzero(peaks), strict=True)) == {(3, 3)}


def test_peak_counts(rng):
    n = 32
    m = np.zeros((2, n, n))
    heights = [0.5, 1.5, 2.5, 3.5]
    for k, h in enumerate(heights):
        m[0, 4 + 6 * k, 4 + 6 * k] = h
        m[1, 4 + 6 * k, 20] = h
    m[1, 4:28:6, 20] *= 2
    centres, counts = stats.peak_counts(m, edges=[0, 1, 2, 3, 4])
    np.testing.assert_array_equal(counts[0], [1, 1, 1, 1])
    np.testing.assert_array_equal(counts[1], [0, 1, 0, 1])  # 1, 3, 5, 7: two beyond range
    # in S/N units, a per-map noise halves the second map's heights back
    sigma = np.array([1.0, 2.0])[:, None, None]
    _, counts = stats.peak_counts(m, edges=[0, 1, 2, 3, 4], noise_sigma=sigma)
    np.testing.assert_array_equal(counts, [[1, 1, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="noise_sigma"):
        stats.peak_counts(m, edges=[0, 1], noise_sigma=0.0)
    # noise maps: every strict local maximum away from the border is counted once
    noise = rng.normal(size=(n, n))
    _, counts = stats.peak_counts(noise, edges=[-100.0, 100.0])
    assert counts[0] == stats.find_peaks(noise).sum() > 0
