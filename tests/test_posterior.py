"""Tests of the sample_patch stage: product layout, bit-identical reruns, resuming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits

from kappadiff.diffusion import sampler
from kappadiff.diffusion.checkpoint import CHECKPOINT_FORMAT, load_prior, save_checkpoint
from kappadiff.diffusion.data import Normalisation
from kappadiff.diffusion.process import make_schedule
from kappadiff.diffusion.unet import UNet, UNetConfig
from kappadiff.lensing import kappa_to_shear
from kappadiff.products import (
    ProductError,
    image_hdu,
    provenance,
    tan_header,
    write_fits,
    write_table,
)
from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages import posterior
from kappadiff.stages.posterior import sample_patch

N, BINS = 16, 4
#: The catalogue identity every patch product carries (products.CATALOGUE_CARDS).
IDENTITY = {"SOURCE": "mock", "CATALOG": "synthetic.fits", "CATHASH": "0123456789abcdef"}

SAMPLING = {
    "n_samples": 3,
    "batch_size": 2,
    "n_steps": 4,
    "step_power": 3.0,
    "eta": 1.0,
    "scaled": True,
    "t_bar": [500, 450, 400, 350],
    "sigma_t": 20,
    "step": "beta",
    "zeta": 1.0,
    "shear_pad": 0,
    "precision": "fp32",
    "device": "cpu",
    "save_samples": "float32",
    "checkpoint_batches": True,
    "runtime_min": 10,
    "mem_mb": 1000,
}


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=BINS, base_channels=8, channel_mults=(1, 2), attention_levels=())
    model = UNet(cfg)
    norm = Normalisation("affine", torch.zeros(BINS), torch.full((BINS,), 0.02), torch.zeros(BINS))
    state = {
        "format": CHECKPOINT_FORMAT,
        "unet": cfg.to_dict(),
        "ema": model.state_dict(),
        "model": model.state_dict(),
        "schedule": make_schedule(T=1000).to_dict(),
        "normalisation": norm.to_dict(),
        "npix": N,
        "step": 0,
    }
    path = tmp_path / "model.pt"
    save_checkpoint(path, state)
    return path


def write_patch(path, rng, npix=N, patch_id=None):
    """A data patch as ``pixelise`` writes it; its PATCHID is the id in the file name."""
    patch_id = int(path.stem.split("_")[-1]) if patch_id is None else patch_id
    kappa = rng.normal(0, 0.02, (BINS, npix, npix))
    g1, g2 = kappa_to_shear(kappa)
    sigma = np.full(kappa.shape, 0.03)
    mask = np.ones(kappa.shape)
    mask[:, :3, :5] = 0
    sigma[mask == 0] = 0
    g1 = g1 + sigma * rng.normal(size=kappa.shape)
    g2 = g2 + sigma * rng.normal(size=kappa.shape)
    wcs = tan_header(150.0, -30.0, npix, 16.0)
    arrays = {"G1": g1, "G2": g2, "SIGMA": sigma, "MASK": mask, "NGAL": 10 * mask}
    cards = provenance(None, PATCHID=patch_id, **IDENTITY)
    write_fits(path, [image_hdu(k, v, wcs) for k, v in arrays.items()], primary_header=cards)
    return path


@pytest.fixture
def data_path(tmp_path, rng):
    return write_patch(tmp_path / "data" / "patch_0003.fits", rng)


def config(**changes):
    return {"seed": 11, "sampling": {**SAMPLING, **changes}}


def test_product_holds_mean_std_samples_wcs_and_header(tmp_path, data_path, model_path):
    out = sample_patch(data_path, model_path, tmp_path / "post" / "patch_0003.fits", config(), 3)
    with fits.open(out) as hdul:
        hdul.verify("exception")
        names = [h.name for h in hdul[1:]]
        assert names == ["MEAN", "STD", "SAMPLES", "CHI2", "DRIFT", "TSTEPS"]
        samples = hdul["SAMPLES"].data.astype(np.float64)
        assert samples.shape == (3, BINS, N, N)
        assert hdul["SAMPLES"].data.dtype == np.dtype(">f4")
        # float32 samples against float64 statistics of float32 values: 1e-6 relative
        np.testing.assert_allclose(hdul["MEAN"].data, samples.mean(0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(hdul["STD"].data, samples.std(0, ddof=1), rtol=1e-5, atol=1e-9)
        with fits.open(data_path) as data:
            for key in ("CTYPE1", "CRVAL1", "CRVAL2", "CRPIX1", "CDELT1", "CDELT2"):
                assert hdul["MEAN"].header[key] == data["G1"].header[key]
        h = hdul[0].header
        assert h["NFE"] == 4 and h["NSAMPLE"] == 3 and h["PATCHID"] == 3
        assert [h[f"TBAR{b}"] for b in range(1, 5)] == [500, 450, 400, 350]
        assert h["SIGT1"] == 20 and h["SCALED"] is True
        assert h["SEED"] == posterior.posterior_seed(11, 3)
        assert len(h["MODHASH"]) == 16 and h["RUNTIME"] > 0
        chi2 = hdul["CHI2"].data
        assert chi2.shape == (3, BINS)
        np.testing.assert_allclose([h[f"CHI2DOF{b}"] for b in range(1, 5)], chi2.mean(0), rtol=1e-6)
        assert hdul["DRIFT"].data.shape == (4, BINS)
        assert hdul["TSTEPS"].data.tolist() == sampler.timestep_sequence(1000, 4, 3.0)
        assert h["STEPPOW"] == 3.0
    assert not (tmp_path / "post" / "patch_0003.fits.partial.npz").exists()


def test_rerun_is_bit_identical_and_seeds_differ_by_patch(tmp_path, model_path):
    # patches 3 and 4 hold the same data: only the seed differs
    data_3, data_4 = (
        write_patch(tmp_path / f"patch_000{i}.fits", np.random.default_rng(5)) for i in (3, 4)
    )
    a = sample_patch(data_3, model_path, tmp_path / "a.fits", config(), 3)
    b = sample_patch(data_3, model_path, tmp_path / "b.fits", config(), 3)
    c = sample_patch(data_4, model_path, tmp_path / "c.fits", config(), 4)
    with fits.open(a) as ha, fits.open(b) as hb, fits.open(c) as hc:
        for name in ("MEAN", "STD", "SAMPLES", "CHI2", "DRIFT"):
            assert ha[name].data.tobytes() == hb[name].data.tobytes(), name
        assert not np.array_equal(ha["SAMPLES"].data, hc["SAMPLES"].data)
        # the three samples are distinct draws
        s = ha["SAMPLES"].data
        assert not np.array_equal(s[0], s[1]) and not np.array_equal(s[1], s[2])


def test_speed_switches_change_nothing_on_cpu_and_rerun_nothing(tmp_path, data_path, model_path):
    # GPU-only switches: on CPU the product is the plain run's bit for bit, and they are not
    # among the rule's params (rerun trigger) nor in the resume key of a partial run
    on = {"channels_last": True, "compile": "max-autotune", "cudnn_benchmark": True}
    a = sample_patch(data_path, model_path, tmp_path / "a.fits", config(), 3)
    b = sample_patch(data_path, model_path, tmp_path / "b.fits", config(**on), 3)
    with fits.open(a) as ha, fits.open(b) as hb:
        for name in ("MEAN", "STD", "SAMPLES", "CHI2", "DRIFT"):
            assert ha[name].data.tobytes() == hb[name].data.tobytes(), name
    assert posterior.sampling_params(config(**on)) == posterior.sampling_params(config())
    key = posterior._resume_key("d", "m", 1, 3, config(**on)["sampling"])
    assert key == posterior._resume_key("d", "m", 1, 3, config()["sampling"])


def test_preempted_job_resumes_from_finished_batches(tmp_path, data_path, model_path, monkeypatch):
    ref = sample_patch(data_path, model_path, tmp_path / "ref.fits", config(), 3)
    out = tmp_path / "run.fits"
    real = sampler.ddim_sample
    calls = []

    def preempted(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt("pre-empted")
        return real(*args, **kwargs)

    monkeypatch.setattr(posterior, "ddim_sample", preempted)
    with pytest.raises(KeyboardInterrupt):
        sample_patch(data_path, model_path, out, config(), 3)
    assert not out.exists()
    assert (tmp_path / "run.fits.partial.npz").exists()

    calls.clear()
    sample_patch(data_path, model_path, out, config(), 3)
    assert calls == [(1, BINS, N, N)]  # only the unfinished batch (sample 2) is drawn
    assert not (tmp_path / "run.fits.partial.npz").exists()
    with fits.open(ref) as hr, fits.open(out) as ho:
        assert hr["SAMPLES"].data.tobytes() == ho["SAMPLES"].data.tobytes()


def test_partial_file_of_other_settings_is_not_reused(tmp_path, data_path, model_path, monkeypatch):
    out = tmp_path / "run.fits"
    real = sampler.ddim_sample
    calls = []

    def preempted(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt("pre-empted")
        return real(*args, **kwargs)

    monkeypatch.setattr(posterior, "ddim_sample", preempted)
    with pytest.raises(KeyboardInterrupt):
        sample_patch(data_path, model_path, out, config(), 3)
    monkeypatch.setattr(posterior, "ddim_sample", real)
    sample_patch(data_path, model_path, out, config(t_bar=600), 3)
    ref = sample_patch(data_path, model_path, tmp_path / "ref.fits", config(t_bar=600), 3)
    with fits.open(ref) as hr, fits.open(out) as ho:
        assert hr["SAMPLES"].data.tobytes() == ho["SAMPLES"].data.tobytes()


def preempt_after(monkeypatch, n_batches):
    """Make the sampler die once, on batch ``n_batches + 1``; returns the drawn shapes."""
    real = sampler.ddim_sample
    calls = []
    started = []

    def preempted(*args, **kwargs):
        calls.append(args[2])
        started.append(args[2])
        if len(started) == n_batches + 1:
            raise KeyboardInterrupt("pre-empted")
        return real(*args, **kwargs)

    monkeypatch.setattr(posterior, "ddim_sample", preempted)
    return calls


@pytest.mark.parametrize(
    "before, after, batch, drawn_again",
    [
        # 3 of 4 samples drawn one at a time, then n_samples = 2: the first 2 are kept
        (4, 2, 1, []),
        # batch (0, 2) of a 3-sample run drawn, then n_samples = 1: a fresh run draws a
        # batch (0, 1), seeded differently, so nothing of the partial run is kept
        (3, 1, 2, [(1, BINS, N, N)]),
    ],
)
def test_lowered_n_samples_gives_exactly_a_fresh_runs_samples(
    tmp_path, data_path, model_path, monkeypatch, before, after, batch, drawn_again
):
    out = tmp_path / "run.fits"
    calls = preempt_after(monkeypatch, n_batches=-(-(before - 1) // batch))
    with pytest.raises(KeyboardInterrupt):
        sample_patch(data_path, model_path, out, config(n_samples=before, batch_size=batch), 3)
    assert (tmp_path / "run.fits.partial.npz").exists()

    calls.clear()
    sample_patch(data_path, model_path, out, config(n_samples=after, batch_size=batch), 3)
    assert calls == drawn_again
    fresh = sample_patch(
        data_path, model_path, tmp_path / "fresh.fits", config(n_samples=after, batch_size=batch), 3
    )
    with fits.open(out) as ho, fits.open(fresh) as hf:
        assert ho[0].header["NSAMPLE"] == after
        samples = ho["SAMPLES"].data
        assert samples.shape == (after, BINS, N, N)
        assert samples.tobytes() == hf["SAMPLES"].data.tobytes()  # bit for bit on CPU
        # MEAN and CHI2 are of exactly those samples (float64 mean of float32 values)
        np.testing.assert_allclose(ho["MEAN"].data, samples.astype(np.float64).mean(0), rtol=1e-6)
        assert ho["CHI2"].data.shape == (after, BINS)
        for name in ("MEAN", "STD", "CHI2", "DRIFT"):
            assert ho[name].data.tobytes() == hf[name].data.tobytes(), name


def test_partial_file_of_other_draws_is_discarded_saying_why(
    tmp_path, data_path, model_path, monkeypatch, caplog
):
    out = tmp_path / "run.fits"
    preempt_after(monkeypatch, n_batches=1)
    with pytest.raises(KeyboardInterrupt):
        sample_patch(data_path, model_path, out, config(), 3)
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        sample_patch(data_path, model_path, out, config(step_power=2.0, runtime_min=99), 3)
    # the run time limit does not change a draw, the step spacing does
    assert "run.fits.partial.npz was drawn with another sampling.step_power: starting afresh" in (
        caplog.text
    )
    assert "resuming" not in caplog.text


def test_unscaled_float16_without_samples_options(tmp_path, data_path, model_path):
    out = sample_patch(
        data_path, model_path, tmp_path / "u.fits", config(scaled=False, save_samples="float16"), 3
    )
    with fits.open(out) as hdul:
        # scaled-integer cards are read before the data (astropy drops them on scaling)
        assert hdul["SAMPLES"].header["BITPIX"] == 16
        bscale = hdul["SAMPLES"].header["BSCALE"]
        half = hdul["SAMPLES"].data
    ref = sample_patch(data_path, model_path, tmp_path / "r.fits", config(scaled=False), 3)
    with fits.open(ref) as hdul:
        full = hdul["SAMPLES"].data
    # 16-bit storage rounds to the nearest of 65536 levels over the range: ≤ BSCALE/2
    assert bscale < (full.max() - full.min()) / 6e4
    np.testing.assert_allclose(half, full, rtol=0, atol=0.51 * bscale)
    with fits.open(out) as hdul:
        assert hdul[0].header["SCALED"] is False and "TBAR1" not in hdul[0].header
    out = sample_patch(data_path, model_path, tmp_path / "n.fits", config(save_samples="none"), 3)
    with fits.open(out) as hdul:
        assert "SAMPLES" not in [h.name for h in hdul]


def test_patch_of_the_wrong_size_is_refused(tmp_path, rng, model_path):
    bad = write_patch(tmp_path / "patch_0001.fits", rng, npix=8)
    with pytest.raises(ProductError, match=r"patch_0001.fits: 4 bins of 8 x 8 pixels"):
        sample_patch(bad, model_path, tmp_path / "out.fits", config(), 1)


def test_missing_hdu_is_named(tmp_path, rng, model_path):
    path = tmp_path / "patch_0002.fits"
    g1 = image_hdu("G1", np.zeros((BINS, N, N)), tan_header(0, 0, N, 16.0))
    write_fits(path, [g1], primary_header=provenance(None, PATCHID=2, **IDENTITY))
    with pytest.raises(ProductError, match=r"patch_0002.fits: no HDU \['G2', 'SIGMA', 'MASK'\]"):
        sample_patch(path, model_path, tmp_path / "out.fits", config(), 2)


def test_sampling_params_leave_the_patch_list_out():
    cfg = {"seed": 5, "sampling": {**SAMPLING, "patches": [1, 2]}, "layout": {"npix": 16}}
    params = posterior.sampling_params(cfg)
    assert params == {"seed": 5, "sampling": SAMPLING}


def test_tuned_scaling_file_replaces_t_bar_and_sigma_t(tmp_path, data_path, model_path):
    scaling = tmp_path / "scaling.fits"
    write_table(
        scaling,
        {
            "bin": np.arange(1, 5),
            "t_bar": np.array([520.0, 510, 490, 480]),
            "sigma_t": np.array([15.0, 20, 25, 30]),
        },
        header=IDENTITY,  # tuned on the mocks of the data's own catalogue
    )
    out = sample_patch(
        data_path, model_path, tmp_path / "t.fits", config(scaled=False), 3, scaling_path=scaling
    )
    ref = sample_patch(
        data_path,
        model_path,
        tmp_path / "r.fits",
        config(t_bar=[520.0, 510, 490, 480], sigma_t=[15.0, 20, 25, 30]),
        3,
    )
    with fits.open(out) as ho, fits.open(ref) as hr:
        h = ho[0].header
        assert h["SCALED"] is True
        assert [h[f"TBAR{b}"] for b in range(1, 5)] == [520, 510, 490, 480]
        assert [h[f"SIGT{b}"] for b in range(1, 5)] == [15, 20, 25, 30]
        assert ho["SAMPLES"].data.tobytes() == hr["SAMPLES"].data.tobytes()
    # a scaling tuned on another catalogue's mocks is refused, naming both files
    other = tmp_path / "other_scaling.fits"
    columns = {"bin": np.arange(1, 5), "t_bar": np.full(4, 500.0), "sigma_t": np.full(4, 20.0)}
    write_table(other, columns, header={**IDENTITY, "SOURCE": "fits", "CATHASH": "ffff"})
    with pytest.raises(ProductError, match=r"other_scaling.fits was made from catalogue .*patch"):
        sample_patch(data_path, model_path, tmp_path / "x.fits", config(), 3, scaling_path=other)


def test_data_of_another_patch_or_without_patch_id_is_refused(tmp_path, rng, model_path):
    # the id seeds the draws: patch 4's samples from patch 3's data are refused
    data = write_patch(tmp_path / "patch_0003.fits", rng)
    with pytest.raises(
        ProductError, match=r"patch_0003.fits holds patch 3 \(PATCHID\), but patch 4"
    ):
        sample_patch(data, model_path, tmp_path / "out.fits", config(), 4)
    assert not (tmp_path / "out.fits").exists()
    old = tmp_path / "patch_0005.fits"
    with fits.open(data) as hdul:
        del hdul[0].header["PATCHID"]
        hdul.writeto(old, checksum=True)
    with pytest.raises(ProductError, match=r"patch_0005.fits: no PATCHID.*pixelise pixelise_mocks"):
        sample_patch(old, model_path, tmp_path / "out.fits", config(), 5)


def test_scaling_and_scaling_file_together_are_refused(tmp_path, data_path, model_path):
    with pytest.raises(ValueError, match="not both"):
        sample_patch(
            data_path, model_path, tmp_path / "out.fits", config(), 3,
            scaling_path=tmp_path / "scaling.fits", scaling=LikelihoodScaling(),
        )  # fmt: skip


def test_explicit_scaling_is_drawn_recorded_and_part_of_the_resume_key(
    tmp_path, data_path, model_path, monkeypatch, caplog
):
    scaling = LikelihoodScaling((520.0, 510.0, 490.0, 480.0), (15.0, 20.0, 25.0, 30.0))
    out = tmp_path / "run.fits"
    # a run of the configuration's A(t) is pre-empted; the explicit one must start afresh
    preempt_after(monkeypatch, n_batches=1)
    with pytest.raises(KeyboardInterrupt):
        sample_patch(data_path, model_path, out, config(), 3)
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        sample_patch(data_path, model_path, out, config(), 3, scaling=scaling)
    assert "drawn with another sampling.sigma_t, sampling.t_bar: starting afresh" in caplog.text
    ref = sample_patch(
        data_path,
        model_path,
        tmp_path / "ref.fits",
        config(t_bar=list(scaling.t_bar), sigma_t=list(scaling.sigma_t)),
        3,
    )
    with fits.open(out) as ho, fits.open(ref) as hr:
        h = ho[0].header
        assert LikelihoodScaling.from_header(h) == scaling
        assert [h[f"TBAR{b}"] for b in range(1, 5)] == [520, 510, 490, 480]
        assert [h[f"SIGT{b}"] for b in range(1, 5)] == [15, 20, 25, 30]
        assert ho["SAMPLES"].data.tobytes() == hr["SAMPLES"].data.tobytes()


def write_covariance(tmp_path, model_path):
    """The prior's denoiser covariance as the ``denoiser_covariance`` rule writes it."""
    from kappadiff.stages.prior import measure_denoiser_covariance

    cutouts = tmp_path / "sim000_cutouts.npy"
    np.save(cutouts, np.random.default_rng(0).normal(0, 0.02, (16, BINS, N, N)).astype("f4"))
    cfg = {"seed": 11, "sampling": {"split_gibbs": {"covariance_maps": 16}}}
    return measure_denoiser_covariance(model_path, [cutouts], tmp_path / "cov.fits", cfg)


SPLIT_GIBBS = {
    "method": "split_gibbs",
    "split_gibbs": {"sweeps": 5, "rho_start": 10.0, "floor_fraction": 0.5, "prior_steps": 1,
                    "prior_last_ratio": 0.1, "final_steps": 3, "final_rho": 0.01,
                    "cg_tol": 1e-6, "cg_max_iter": 500, "covariance_maps": 16},
}  # fmt: skip


def test_split_gibbs_product_records_its_sampler_and_reruns_bit_identically(
    tmp_path, data_path, model_path
):
    cov = write_covariance(tmp_path, model_path)
    with fits.open(cov) as hdul:
        # rings |k| = 0 … round(√2 N/2): 12 for N = 16
        n_rings = int(round(np.hypot(N / 2, N / 2))) + 1
        assert hdul["GAMMA"].data.shape == (len(hdul["RHO"].data), n_rings, BINS, BINS)
        assert hdul[0].header["NMAPS"] == 16 and hdul[0].header["NPIX"] == N
    out = tmp_path / "post" / "patch_0003.fits"
    # the rule's params: the split-Gibbs keys, none of DPS's
    params = posterior.sampling_params(config(**SPLIT_GIBBS))
    sample_patch(data_path, model_path, out, params, 3, covariance_path=cov)
    with fits.open(out) as hdul:
        h = hdul[0].header
        # four sweeps of one call, then the last one's three down to the clean map
        assert h["METHOD"] == "split_gibbs" and h["NFE"] == 7 and h["SWEEPS"] == 5
        # the floor: half the smallest shear noise (σ = 0.03) over the prior's κ scale, to
        # the schedule's nearest level (1000 levels over 10 decades of ρ: < 3 % apart)
        floor = 0.5 * 0.03 / float(load_prior(model_path).normalisation.std.max())
        assert h["RHOFLOOR"] == pytest.approx(floor, rel=0.03) and h["FLOORFR"] == 0.5
        assert h["PRLAST"] == 0.1 and h["CGITER"] >= 1 and "TBAR1" not in h
        assert hdul["TSTEPS"].data.shape == (5,) and hdul["DRIFT"].data.shape == (5, BINS)
        assert np.all(np.diff(hdul["TSTEPS"].data) <= 0)
        first = hdul["SAMPLES"].data.copy()
        # the data are fitted: κ of rms 0.02 under shear noise 0.03 gives a map that
        # ignores the data χ²/dof ≈ (0.02² + 0.03²)/0.03² = 1.44; every sample fits better
        assert np.all(hdul["CHI2"].data < 1.35) and hdul["CHI2"].data.mean() < 1.25
    again = tmp_path / "post2" / "patch_0003.fits"
    sample_patch(data_path, model_path, again, params, 3, covariance_path=cov)
    with fits.open(again) as hdul:
        np.testing.assert_array_equal(hdul["SAMPLES"].data, first)
    with pytest.raises(ValueError, match="denoiser covariance"):
        sample_patch(data_path, model_path, tmp_path / "x.fits", config(**SPLIT_GIBBS), 3)


def test_dps_params_do_not_see_the_split_gibbs_keys():
    # a DPS run's params (its rerun trigger) are those of a config without the method choice
    base = posterior.sampling_params(config())
    with_choice = posterior.sampling_params(config(method="dps", **{"split_gibbs": {"sweeps": 3}}))
    assert with_choice == base
    sg = posterior.sampling_params(config(**SPLIT_GIBBS))
    assert sg["sampling"]["method"] == "split_gibbs" and "t_bar" not in sg["sampling"]
