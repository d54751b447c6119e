"""Flat-sky summary statistics: spectra, ρ_c(ℓ), PDF and peaks, and maps against the truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from validation_products import N_BINS

from kappadiff import lensing, plots, stats
from kappadiff.lensing import fourier_ell
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


# Validation-sized patches: ℓ bins, the ensemble band, truth peaks, and reconstructions
# against the truth (stats.accuracy)


@pytest.mark.parametrize(("npix", "scale"), [(16, 16.0), (64, 4.0), (256, 1.0)])
def test_log_ell_bins_cover_the_patch_without_empty_bins(npix, scale):
    edges = stats.log_ell_bins(npix, scale, 10)
    ell = fourier_ell(npix, npix, scale).ravel()
    modes = ell[ell > 0]
    assert np.all(np.diff(edges) > 0)
    assert edges[0] < modes.min() and edges[-1] == pytest.approx(np.pi / (scale * np.pi / 10800))
    counts = np.histogram(modes, bins=edges)[0]
    assert np.all(counts > 0)
    assert len(edges) - 1 <= 10


def test_ensemble_power_band_is_the_scatter_of_patch_set_means(rng):
    # per-patch C_l of a white field: chi^2-like scatter about 1 with 10 % rms
    cl = 1.0 + 0.1 * rng.standard_normal(size=(4000, 2, 5))
    band4 = stats.ensemble_power_band(cl, 4, n_draws=4000, seed=1)
    band16 = stats.ensemble_power_band(cl, 16, n_draws=4000, seed=1)
    np.testing.assert_allclose(band4["cl"], cl.mean(axis=0))
    # 95 % of means of n: 1 +- 1.96 * 0.1 / sqrt(n) (a few % of Monte-Carlo error)
    np.testing.assert_allclose(band4["cl_hi"] - 1.0, 1.96 * 0.05, rtol=0.1)
    np.testing.assert_allclose(1.0 - band16["cl_lo"], 1.96 * 0.025, rtol=0.1)
    with pytest.raises(ValueError, match="17 patches from 16 cut-outs"):
        stats.ensemble_power_band(cl[:16], 17)


def test_truth_peaks_are_the_highest(rng):
    kappa = rng.normal(size=(N_BINS, 16, 16))
    kappa[2, 5, 7] = 10.0
    kappa[2, 11, 3] = 8.0
    peaks = stats.truth_peaks(kappa, 2)
    row, col, height = peaks[2]
    np.testing.assert_array_equal(row, [5, 11])
    np.testing.assert_array_equal(col, [7, 3])
    np.testing.assert_array_equal(height, [10.0, 8.0])


def test_compare_statistics_against_known_answers(rng):
    n_patch, npix = 6, 32
    truth = rng.normal(size=(n_patch, N_BINS, npix, npix))
    noise = rng.normal(size=truth.shape)
    maps = {
        "truth": truth,
        "mean": truth.copy(),  # a perfect reconstruction
        "wiener": truth + 3.0 * noise,  # white noise at 9x the signal power
        "samples": truth[None] + 0.2 * rng.normal(size=(5, *truth.shape)),
    }
    mask = np.ones_like(truth)
    edges = stats.log_ell_bins(npix, 4.0, 6)
    pdf_edges = np.tile(np.linspace(-5, 5, 21), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 5, 7), (N_BINS, 1))
    res = stats.compare_statistics(maps, mask, 4.0, edges, pdf_edges, peak_edges)
    # identical maps: rho = 1 to rounding, never crossing 0.5
    np.testing.assert_allclose(res["mean"]["rho"], 1.0, atol=1e-12)
    assert np.all(np.isnan(res["mean"]["ell_half"]))
    # white signal + white noise of 9x its power: rho = 1/sqrt(10) = 0.32 at every ell,
    # with scatter ~1/sqrt(modes) (~0.2 in the lowest bin of 24 modes), so it falls below
    # 0.5 within the first bins
    assert np.all(res["wiener"]["rho"].mean(axis=-1) < 0.45)
    assert np.all(res["wiener"]["ell_half"] <= res["wiener"]["ell"][2])
    # samples: C_l of truth + 4 % extra white power, cl of samples / cl of truth = 1.04, up
    # to the truth x noise cross term: sd 2 x 0.2 / sqrt(2 x 24 modes x 6 patches x 5 samples)
    # = 0.02 in the lowest bin; 3 sd
    ratio = res["samples"]["cl"] / res["truth"]["cl"]
    np.testing.assert_allclose(ratio, 1.04, atol=0.06)
    assert np.all(res["samples"]["cl_lo"] <= res["samples"]["cl_hi"])
    # unit-variance Gaussian PDF: density integrates to the fraction within ±5 (≈ 1)
    integral = (res["truth"]["pdf"] * 0.5).sum(axis=-1)
    np.testing.assert_allclose(integral, 1.0, atol=1e-3)
    # same peaks for identical maps
    np.testing.assert_array_equal(res["mean"]["peaks"], res["truth"]["peaks"])


def test_ell_half_bootstrap_resamples_patches_alike_for_every_method(rng):
    truth = rng.normal(size=(8, N_BINS, 16, 16))
    noisy = truth + 2.0 * rng.normal(size=truth.shape)  # rho ~ 0.45, crossing 0.5 early
    maps = {"truth": truth, "wiener": noisy, "mean": noisy.copy()}
    pdf_edges = np.tile(np.linspace(-4, 4, 9), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 4, 6), (N_BINS, 1))
    args = (np.ones_like(truth), 4.0, stats.log_ell_bins(16, 4.0, 4), pdf_edges, peak_edges)
    res = stats.compare_statistics(maps, *args, n_bootstrap=50, seed=3)
    boot_w, boot_m = res["wiener"]["ell_half_boot"], res["mean"]["ell_half_boot"]
    assert boot_w.shape == (50, N_BINS)
    # the same patch draws for every method: identical maps give identical resamplings
    np.testing.assert_array_equal(boot_m, boot_w)
    # and the draws do resample: 8 noisy patches do not give one ell_half 50 times
    assert np.all(np.nanstd(boot_w, axis=0) > 0)
    # 8 copies of one patch: every resampling is the whole set, so no scatter
    same = {k: np.repeat(v[:1], 8, axis=0) for k, v in maps.items()}
    res = stats.compare_statistics(same, *args, n_bootstrap=20, seed=3)
    np.testing.assert_allclose(
        res["wiener"]["ell_half_boot"], np.broadcast_to(res["wiener"]["ell_half"], (20, N_BINS))
    )


def test_compare_statistics_uses_observed_pixels_only(rng):
    truth = rng.normal(size=(1, N_BINS, 16, 16))
    ks = truth.copy()
    ks[..., :8, :] = 0.0  # zero-filled masked half, as Kaiser-Squires leaves it
    mask = np.ones_like(truth)
    mask[..., :8, :] = 0
    pdf_edges = np.tile(np.linspace(-4, 4, 9), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-1, 4, 6), (N_BINS, 1))
    res = stats.compare_statistics(
        {"truth": truth, "ks": ks},
        mask,
        16.0,
        stats.log_ell_bins(16, 16.0, 4),
        pdf_edges,
        peak_edges,
    )
    np.testing.assert_array_equal(res["ks"]["pdf"], res["truth"]["pdf"])
    np.testing.assert_array_equal(res["ks"]["peaks"], res["truth"]["peaks"])
    # spectra of the observed pixels: a map equal to the truth where observed has rho = 1
    # and the truth's C_l, whatever it holds in the masked half (whole-patch spectra would
    # give rho ~ 0.7 here: half the truth's power is in the masked half)
    np.testing.assert_allclose(res["ks"]["rho"], 1.0, atol=1e-12)
    np.testing.assert_allclose(res["ks"]["cl"], res["truth"]["cl"], rtol=1e-12)
    noisy = truth + np.where(mask == 0, 5.0 * rng.normal(size=truth.shape), 0.0)
    res = stats.compare_statistics(
        {"truth": truth, "prior": noisy},
        mask,
        16.0,
        stats.log_ell_bins(16, 16.0, 4),
        pdf_edges,
        peak_edges,
    )
    np.testing.assert_allclose(res["prior"]["rho"], 1.0, atol=1e-12)


def test_mean_rho_is_of_observed_pixels_and_ignores_amplitude(rng):
    npix, scale = 16, 16.0
    edges = stats.log_ell_bins(npix, scale, 6)
    mu = rng.normal(0.0, 2.0, size=(6, N_BINS, npix, npix))
    truth = mu + rng.normal(size=mu.shape)
    exact = stats.mean_rho(truth, truth, np.ones_like(truth), scale, edges)
    np.testing.assert_allclose(exact, 1.0, atol=1e-12)
    # amplitude does not count (the calibration test constrains it); noise does:
    # white maps, rho = 4 / sqrt(4 * 5) ≈ 0.894 for the mean mu of a truth mu + n
    shrunk = stats.mean_rho(0.3 * mu, truth, np.ones_like(truth), scale, edges)
    np.testing.assert_allclose(shrunk, stats.mean_rho(mu, truth, np.ones_like(truth), scale, edges))
    assert shrunk.shape == (N_BINS + 1,)
    assert np.all(np.abs(shrunk - 0.894) < 0.05)  # ~1500 modes a bin: sd of rho ≈ 0.01
    np.testing.assert_allclose(shrunk[0], shrunk[1:].mean())
    # anything in masked pixels is not measured
    mask = np.ones_like(truth)
    mask[..., :, : npix // 2] = 0.0
    garbage = np.where(mask > 0, mu, 1e3 * rng.normal(size=mu.shape))
    np.testing.assert_allclose(
        stats.mean_rho(garbage, truth, mask, scale, edges),
        stats.mean_rho(mu, truth, mask, scale, edges),
    )


def test_power_ratio_and_error_of_rescaled_truths(rng):
    """Samples that are the truth times a have a² of its power at every ℓ: error |a² − 1|."""
    truth = rng.normal(size=(3, N_BINS, 32, 32))
    amp = np.array([1.0, 1.1, 0.9, 1.3])[None, None, :, None, None]
    samples = np.repeat(truth[None], 2, axis=0) * amp
    mask = np.ones_like(truth)
    mask[:, :, :4] = 0.0  # masked pixels count in neither
    samples[:, :, :, :4] = 100.0
    edges = stats.log_ell_bins(32, 4.0, 6)
    ell, ratio = stats.power_ratio(samples, truth, mask, 4.0, edges)
    assert ratio.shape == (N_BINS, len(ell))
    np.testing.assert_allclose(ratio, np.broadcast_to(amp.reshape(-1, 1) ** 2, ratio.shape))
    np.testing.assert_allclose(stats.power_error(ratio), [0.69, 0.0, 0.21, 0.19, 0.69], atol=1e-12)
    # one ℓ bin 50 % off counts for its share of the mean only
    ratio[0, 0] = 1.5
    assert stats.power_error(ratio)[1] == pytest.approx(0.5 / len(ell))
    fig = plots.calibration_panels(
        {"tuned": (np.arange(3), np.ones((3, N_BINS)))},
        {"tuned": {}},
        {"tuned": (ell, ratio, stats.power_error(ratio)[0])},
    )
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"


def test_compare_prior_measures_the_power_ratio(rng):
    sims = rng.normal(size=(20, N_BINS, 16, 16))
    edges = stats.log_ell_bins(16, 16.0, 6)
    pdf_edges = np.tile(np.linspace(-8, 8, 11), (N_BINS, 1))
    peak_edges = np.tile(np.linspace(-2, 8, 6), (N_BINS, 1))
    res = stats.compare_prior(2.0 * sims, sims, 16.0, edges, pdf_edges, peak_edges)
    # the same maps at twice the amplitude: exactly 4x the power, the same peaks per map
    np.testing.assert_allclose(res["prior"]["cl"] / res["simulations"]["cl"], 4.0, rtol=1e-12)
    np.testing.assert_allclose(res["prior"]["cl_err"], 4.0 * res["simulations"]["cl_err"])
    assert res["prior"]["peaks"].sum() == pytest.approx(res["simulations"]["peaks"].sum(), rel=0.3)
    # the simulations' C_l from separately given spectra, when there are more of them
    more = np.full((50, N_BINS, len(res["prior"]["ell"])), 3.0)
    res2 = stats.compare_prior(2.0 * sims, sims, 16.0, edges, pdf_edges, peak_edges, more)
    np.testing.assert_array_equal(res2["simulations"]["cl"], 3.0)
    np.testing.assert_array_equal(res2["simulations"]["cl_err"], 0.0)
    np.testing.assert_array_equal(res2["prior"]["cl"], res["prior"]["cl"])
    # a wider PDF: less density in the centre bin
    centre = pdf_edges.shape[1] // 2 - 1
    assert np.all(res["prior"]["pdf"][:, centre] < res["simulations"]["pdf"][:, centre])


def test_corrected_mean_rho_removes_the_sampling_noise_of_the_mean():
    # the posterior mean is the truth itself (ρ_c = 1 at every ℓ) and each of 4 samples adds
    # white noise of the truth's power: their mean has ρ_c = 1/√1.25 = 0.894 uncorrected.
    # 32 patches of 32² pixels: the lowest ℓ bin holds ~8 modes a patch, so the corrected
    # value scatters by ≈ 0.03 there; tolerances 0.1 per bin, 0.03 on the ℓ average
    from kappadiff.stats import corrected_mean_rho, log_ell_bins, mean_rho

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((32, 1, 32, 32))
    samples = truth[None] + rng.standard_normal((4, 32, 1, 32, 32))
    mask = np.ones_like(truth)
    edges = log_ell_bins(32, 4.0, 6)
    rho = corrected_mean_rho(samples, truth, mask, 4.0, edges)
    np.testing.assert_allclose(rho, 1.0, atol=0.1)
    assert rho.mean() == pytest.approx(1.0, abs=0.03)
    plain = mean_rho(samples.mean(axis=0), truth, mask, 4.0, edges)[1]
    assert plain == pytest.approx(1 / np.sqrt(1.25), abs=0.02)
    with pytest.raises(ValueError, match="2 samples"):
        corrected_mean_rho(samples[:1], truth, mask, 4.0, edges)
