"""Prior training: data set and normalisation, exact resume, DDP equivalence, checkpoints."""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import kappadiff.diffusion.train as train_module
import kappadiff.stages.prior as stage
from kappadiff.diffusion.checkpoint import load_checkpoint, load_prior, save_checkpoint
from kappadiff.diffusion.data import (
    CutoutSet,
    augment_dihedral,
    content_hash,
    fit_normalisation,
    open_cutouts,
    split_holdout,
)
from kappadiff.diffusion.process import loss, make_schedule
from kappadiff.diffusion.speed import Speedups
from kappadiff.diffusion.train import (
    TrainSettings,
    checkpoint_state,
    fingerprint,
    new_state,
    train,
)
from kappadiff.diffusion.unet import UNetConfig
from kappadiff.products import ProductError, file_hash

ROOT = Path(__file__).resolve().parents[1]
TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
SETTINGS = TrainSettings(
    steps=6,
    batch_size=4,
    lr=1e-3,
    warmup_steps=2,
    weight_decay=0.01,
    ema_decay=0.99,
    grad_clip=1.0,
    min_snr_gamma=5.0,
    bf16=True,
    seed=11,
)


def lognormal_cutouts(rng: np.random.Generator, n: int, npix: int = 16) -> np.ndarray:
    """Correlated 4-bin shifted-lognormal fields with a red spectrum, float32 [n, 4, npix, npix]."""
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(npix), np.fft.fftfreq(npix), indexing="ij"))
    amp = 1 / np.maximum(k, 1 / npix) ** 1.5
    common = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, 1, npix, npix))) * amp).real
    own = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, 4, npix, npix))) * amp).real
    g = common + 0.5 * own
    g /= g.std()
    scale = np.array([0.4, 0.6, 0.8, 1.0])[None, :, None, None]
    kappa = 0.02 * (np.exp(0.8 * g - 0.32) - 1) * scale
    return kappa.astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread():
    # two intra-op threads on a shared, loaded 2-core machine are ~10x slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cutout_files(tmp_path, rng):
    paths = []
    for i, n in enumerate((24, 16)):
        p = tmp_path / "training" / f"sim{i:03d}_cutouts.npy"
        p.parent.mkdir(exist_ok=True)
        np.save(p, lognormal_cutouts(rng, n))
        paths.append(str(p))
    return paths


def test_affine_normalisation(cutout_files):
    arrays = open_cutouts(cutout_files, npix=16)
    norm = fit_normalisation(arrays, "affine")
    k = torch.from_numpy(np.concatenate(arrays))
    x = norm.from_kappa(k)
    # per-bin standardisation of the training set itself: float32 sums of ~10^4 values
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(4), rtol=1e-3, atol=0)
    torch.testing.assert_close(norm.to_kappa(x), k, rtol=0, atol=1e-7)


def test_shifted_log_normalisation_round_trip(cutout_files):
    arrays = open_cutouts(cutout_files)
    norm = fit_normalisation(arrays, "shifted_log", log_shift_factor=1.5)
    k = torch.from_numpy(np.concatenate(arrays))
    assert torch.all(norm.shift > -k.amin(dim=(0, 2, 3)))  # log argument stays positive
    x = norm.from_kappa(k)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(norm.to_kappa(x), k, rtol=0, atol=1e-6)  # exp/log in float32


def test_bad_cutouts_raise(tmp_path, rng):
    a = lognormal_cutouts(rng, 4)
    a[1, 2, 3, 4] = np.nan
    a[2, 0, 0, 0] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, a)
    with pytest.raises(ValueError, match=r"bad\.npy: 2 non-finite"):
        fit_normalisation(open_cutouts([path]), names=[str(path)])
    np.save(path, a[:, :, :, :8])
    with pytest.raises(ValueError, match=r"bad\.npy: cut-outs must be \[patch, bin, n, n\]"):
        open_cutouts([path])
    np.save(path, lognormal_cutouts(rng, 2, npix=8))
    with pytest.raises(ValueError, match="8 px a side, layout.npix = 16"):
        open_cutouts([path], npix=16)


def test_dihedral_augmentation(rng):
    img = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    outs = [augment_dihedral(img, np.array([op]))[0] for op in range(8)]
    # the 8 symmetries of the square are distinct on a generic image and permute its pixels
    assert len({o.tobytes() for o in outs}) == 8
    for o in outs:
        np.testing.assert_array_equal(np.sort(o, axis=None), np.sort(img, axis=None))
    np.testing.assert_array_equal(outs[1], np.rot90(img[0], 1, axes=(-2, -1)))
    np.testing.assert_array_equal(outs[4], np.swapaxes(img[0], -1, -2))


def test_data_order_covers_each_epoch(cutout_files):
    arrays = open_cutouts(cutout_files)
    train_idx, hold_idx = split_holdout(40, 0.1, seed=3)
    assert len(hold_idx) == 4 and not set(train_idx) & set(hold_idx)
    data = CutoutSet(arrays, train_idx, seed=3)
    # 36 training cut-outs, batch 4: 9 steps an epoch visit each exactly once
    epoch0 = np.concatenate([data.batch_indices(s, 4) for s in range(9)])
    epoch1 = np.concatenate([data.batch_indices(s, 4) for s in range(9, 18)])
    np.testing.assert_array_equal(np.sort(epoch0), train_idx)
    np.testing.assert_array_equal(np.sort(epoch1), train_idx)
    assert not np.array_equal(epoch0, epoch1)
    # reading crosses the file boundary correctly (index 24 is file 1, patch 0)
    np.testing.assert_array_equal(data.read(np.array([24]))[0], arrays[1][0])
    # a process's slice is the same rows as the full global batch
    np.testing.assert_array_equal(data.batch(5, 4, slice(2, 4)), data.batch(5, 4)[2:4])


def _params(state):
    return {k: v.clone() for k, v in state.model.state_dict().items()}


def test_training_reduces_loss(cutout_files):
    # 100 steps on a tiny network: the loss on a fixed evaluation batch (same cut-outs,
    # timesteps and noise before and after) must fall by more than 20% (measured: ~35%)
    arrays = open_cutouts(cutout_files)
    norm = fit_normalisation(arrays)
    sched = make_schedule()
    x0 = norm.from_kappa(torch.from_numpy(np.concatenate(arrays)[:32]))
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, sched.T, (32,), generator=g), torch.randn(x0.shape, generator=g)
    settings = TrainSettings(**{**SETTINGS.__dict__, "steps": 100, "batch_size": 8, "lr": 2e-3})
    state = new_state(TINY, settings, torch.device("cpu"))
    with torch.no_grad():
        before = float(loss(state.model, sched, x0, t, noise))
    train(state, CutoutSet(arrays, seed=1), sched, norm, settings, progress=False)
    with torch.no_grad():
        after = float(loss(state.model, sched, x0, t, noise))
    assert after < 0.8 * before


def test_cosine_learning_rate_reaches_the_optimiser(cutout_files):
    # the rate the optimiser used at each step: the linear warm-up (2 steps) to the peak,
    # then a half cosine to zero at the last step; "constant" stays at the peak. Exact up to
    # float rounding (1e-12): a wrong phase or span moves some step's rate by >= 1e-5.
    arrays = open_cutouts(cutout_files)
    norm, sched = fit_normalisation(arrays), make_schedule()
    for schedule in ("constant", "cosine"):
        settings = TrainSettings(**{**SETTINGS.__dict__, "steps": 10, "lr_schedule": schedule})
        state, rates = new_state(TINY, settings, torch.device("cpu")), []
        step = state.optimizer.step

        def record(*a, _step=step, _rates=rates, _state=state, **k):
            _rates.append(_state.optimizer.param_groups[0]["lr"])
            return _step(*a, **k)

        state.optimizer.step = record
        train(state, CutoutSet(arrays, seed=1), sched, norm, settings, progress=False)
        if schedule == "constant":
            expected = [5e-4, 1e-3] + [1e-3] * 8
        else:
            cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
            expected = [5e-4, 1e-3] + cosine
        np.testing.assert_allclose(rates, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(**{**SETTINGS.__dict__, "lr_schedule": "linear"})
    # a resume under another schedule is refused: the schedule is in the fingerprint
    annealed = TrainSettings(**{**SETTINGS.__dict__, "lr_schedule": "cosine"})
    data = {"files": 1}
    assert (
        fingerprint(TINY, sched, annealed, data)["settings"]
        != fingerprint(TINY, sched, SETTINGS, data)["settings"]
    )


def _trained(cutout_files, steps):
    """The tiny network trained ``steps`` steps on the cut-outs: (state, schedule, norm)."""
    arrays = open_cutouts(cutout_files)
    norm = fit_normalisation(arrays)
    sched = make_schedule()
    state = new_state(TINY, SETTINGS, torch.device("cpu"))
    train(state, CutoutSet(arrays, seed=1), sched, norm, SETTINGS, stop_at=steps, progress=False)
    return state, sched, norm


def test_checkpoint_round_trip_weights_only(tmp_path, cutout_files):
    state, sched, norm = _trained(cutout_files, 3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, checkpoint_state(state, sched, norm, SETTINGS, 16, {"note": "x"}))
    raw = torch.load(path, weights_only=True)  # must not need pickled classes
    assert raw["step"] == 3 and raw["npix"] == 16 and raw["note"] == "x"
    for k, v in state.ema.state_dict().items():
        assert torch.equal(raw["ema"][k], v)
    prior = load_prior(path)
    assert not prior.model.training
    for k, v in state.ema.state_dict().items():  # the prior carries the EMA weights
        assert torch.equal(prior.model.state_dict()[k], v)
    torch.testing.assert_close(prior.schedule.alphas_cumprod, sched.alphas_cumprod)
    # normalisation travels with the checkpoint and is differentiable
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    prior.to_kappa(x).sum().backward()
    torch.testing.assert_close(x.grad[0, :, 0, 0], norm.std)
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt: not a kappadiff prior checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def _stage_config(tmp_path: Path, steps: int) -> dict:
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["prior"]["train_steps"] = steps
    config["prior"]["checkpoint_every"] = 5
    return {"seed": config["seed"], "layout": config["layout"], "prior": config["prior"]}


def _run_stage(out: Path, cutouts, config) -> None:
    stage.train_prior(
        cutouts,
        out / "model.pt",
        out / "loss.csv",
        out / "loss.png",
        out / "samples.png",
        config,
        threads=1,
        gpus=1,
    )


class Killed(RuntimeError):
    pass


def test_resume_after_kill_is_exact(tmp_path, cutout_files, monkeypatch):
    config = _stage_config(tmp_path, steps=20)
    _run_stage(tmp_path / "whole", cutout_files, config)
    reference = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)

    # a "kill" at step 17: checkpoints at 5, 10, 15 were written, the one at 20 never is,
    # and steps 16-17 are lost
    real_save = stage.save_checkpoint

    def save_then_die(path, state):
        if state["step"] >= 20:
            raise Killed("killed")
        real_save(path, state)

    monkeypatch.setattr(stage, "save_checkpoint", save_then_die)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        _run_stage(out, cutout_files, config)
    assert not (out / "model.pt").exists()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 15
    monkeypatch.setattr(stage, "save_checkpoint", real_save)
    _run_stage(out, cutout_files, config)
    resumed = torch.load(out / "model.pt", weights_only=True)

    assert resumed["step"] == reference["step"] == 20
    for key in ("model", "ema"):  # bit-for-bit on CPU
        for name, value in reference[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)
    for pid, st in reference["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(resumed["optimizer"]["state"][pid][name], value)
    assert torch.equal(resumed["losses"], reference["losses"])
    assert (out / "loss.csv").read_text() == (tmp_path / "whole" / "loss.csv").read_text()
    # the same weights make the same samples, so the products' MODHASH is the same
    assert load_prior(out / "model.pt").hash == load_prior(tmp_path / "whole" / "model.pt").hash
    for png in ("loss.png", "samples.png"):
        assert (out / png).stat().st_size > 1000


def test_changed_config_trains_afresh(tmp_path, cutout_files):
    config = _stage_config(tmp_path, steps=5)
    _run_stage(tmp_path, cutout_files, config)
    config["prior"]["lr"] = 2e-3  # a resume under other settings would not be that training
    config["prior"]["train_steps"] = 3
    _run_stage(tmp_path, cutout_files, config)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 3


def test_speed_switches_reach_training_and_change_nothing_on_cpu(
    tmp_path, cutout_files, monkeypatch
):
    seen = []
    real = train_module.compile_network

    def spy(net, device, speedups):
        seen.append(speedups)
        return real(net, device, speedups)

    monkeypatch.setattr(train_module, "compile_network", spy)
    config = _stage_config(tmp_path, steps=3)
    _run_stage(tmp_path / "plain", cutout_files, config)
    on = {"channels_last": True, "compile": "default", "cudnn_benchmark": True}
    config["prior"].update(on)
    _run_stage(tmp_path / "on", cutout_files, config)
    assert seen == [Speedups(), Speedups(**on)]
    plain = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    fast = torch.load(tmp_path / "on" / "model.pt", weights_only=True)
    for key in ("model", "ema"):  # GPU-only switches: bit for bit the plain run on CPU
        for name, value in plain[key].items():
            assert torch.equal(fast[key][name], value), (key, name)
    assert torch.equal(fast["losses"], plain["losses"])
    # and a resume is not refused over them: they are not in the training's fingerprint
    assert fast["fingerprint"] == plain["fingerprint"]


def test_changed_training_data_trains_afresh(tmp_path, cutout_files, rng, caplog):
    config = _stage_config(tmp_path, steps=5)
    out = tmp_path / "prior"
    _run_stage(out, cutout_files, config)
    first = torch.load(out / "model.pt", weights_only=True)

    # the same content rewritten (a rerun of extract_patches): resumed, nothing retrained
    for path in cutout_files:
        np.save(path, np.load(path))
    with caplog.at_level(logging.INFO):
        _run_stage(out, cutout_files, config)
    assert f"resuming from {out / 'checkpoint.pt'} at step 5" in caplog.text

    # new content under the same names and counts, as from another sigma8
    for path in cutout_files:
        np.save(path, 1.2 * lognormal_cutouts(rng, np.load(path).shape[0]))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _run_stage(out, cutout_files, config)
    assert "was made with another training set" in caplog.text
    assert "training afresh" in caplog.text and "resuming" not in caplog.text
    retrained = torch.load(out / "model.pt", weights_only=True)
    assert not torch.equal(retrained["normalisation"]["std"], first["normalisation"]["std"])
    assert any(not torch.equal(v, first["ema"][k]) for k, v in retrained["ema"].items())
    # exactly the training a fresh directory makes of the new data (bit for bit on CPU)
    _run_stage(tmp_path / "fresh", cutout_files, config)
    fresh = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)
    for name, value in fresh["ema"].items():
        assert torch.equal(retrained["ema"][name], value), name


def test_content_hash_sees_every_cutout(rng):
    a = lognormal_cutouts(rng, 100)
    b = a.copy()
    assert content_hash([a]) == content_hash([b])
    # cut-out 37 is not among the 32 read whole; its middle row still enters the hash
    b[37, 2, 8, 5] += 1e-6
    assert content_hash([a]) != content_hash([b])
    assert content_hash([a]) != content_hash([a[:99]])


def test_model_hash_covers_weights_network_and_normalisation_only(tmp_path, cutout_files):
    state, sched, norm = _trained(cutout_files, 2)
    ckpt = checkpoint_state(state, sched, norm, SETTINGS, 16)
    save_checkpoint(tmp_path / "a.pt", ckpt)

    # what a resumed run may hold differently: optimiser moments, RNG state, raw weights,
    # step and losses (the bookkeeping of how the EMA weights were reached)
    other = copy.deepcopy(ckpt)
    for moments in other["optimizer"]["state"].values():
        moments["exp_avg"] *= 2
    other["torch_rng"] = torch.zeros_like(ckpt["torch_rng"])
    other["model"] = {k: v + 1 for k, v in ckpt["model"].items()}
    other["step"], other["losses"] = 7, torch.zeros(7, dtype=torch.float64)
    save_checkpoint(tmp_path / "b.pt", other)
    assert file_hash(tmp_path / "a.pt") != file_hash(tmp_path / "b.pt")
    assert load_prior(tmp_path / "a.pt").hash == load_prior(tmp_path / "b.pt").hash

    # one EMA weight one float32 ulp away, or another normalisation: other samples
    name = next(iter(ckpt["ema"]))
    weight = copy.deepcopy(ckpt)
    w = weight["ema"][name].view(-1)
    w[0] = torch.nextafter(w[0], w[0] + 1)
    scale = copy.deepcopy(ckpt)
    scale["normalisation"]["std"][0] *= 1.001
    for i, changed in enumerate((weight, scale)):
        save_checkpoint(tmp_path / f"c{i}.pt", changed)
        assert load_prior(tmp_path / f"c{i}.pt").hash != load_prior(tmp_path / "a.pt").hash


def test_truncated_checkpoint_is_named(tmp_path, cutout_files):
    state = new_state(TINY, SETTINGS, torch.device("cpu"))
    norm = fit_normalisation(open_cutouts(cutout_files))
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint_state(state, make_schedule(), norm, SETTINGS, 16))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ProductError, match=r"model.pt: not a readable torch checkpoint \(5000 b"):
        load_prior(path)


def _ddp_worker(rank: int, world: int, init_file: str, cutouts: list, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        arrays = open_cutouts(cutouts)
        norm = fit_normalisation(arrays)
        state = new_state(TINY, SETTINGS, torch.device("cpu"))
        train(state, CutoutSet(arrays, seed=1), make_schedule(), norm, SETTINGS, progress=False)
        if rank == 0:
            torch.save({"losses": state.losses, "model": state.model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path, cutout_files):
    out = tmp_path / "ddp.pt"
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), cutout_files, str(out)),
        nprocs=2,
        join=True,
    )
    ddp = torch.load(out, weights_only=True)

    torch.set_num_threads(1)
    arrays = open_cutouts(cutout_files)
    state = new_state(TINY, SETTINGS, torch.device("cpu"))
    train(
        state,
        CutoutSet(arrays, seed=1),
        make_schedule(),
        fit_normalisation(arrays),
        SETTINGS,
        progress=False,
    )
    # the same global batch: equal up to the float32 reduction order of the gradient
    # all-reduce and of the batch mean (relative 1e-5 on O(1) losses after 6 Adam steps)
    np.testing.assert_allclose(ddp["losses"], state.losses, rtol=1e-5)
    for name, value in state.model.state_dict().items():
        # Adam steps are ~lr = 1e-3 whatever the gradient's size, so float-level gradient
        # differences on parameters with near-zero gradients move them by a fraction of lr
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-3, atol=2e-4)


def test_stage_refuses_wrong_bins(tmp_path, rng):
    path = tmp_path / "three.npy"
    np.save(path, lognormal_cutouts(rng, 8)[:, :3])
    with pytest.raises(ValueError, match="three.npy: 3 tomographic bins"):
        _run_stage(tmp_path, [str(path)], _stage_config(tmp_path, 2))


def test_no_torchrun_without_gpus(tmp_path, cutout_files, monkeypatch):
    # asking for 2 GPUs where none is visible trains in-process (CPU) instead of launching
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(stage, "_launch_torchrun", lambda *a: pytest.fail("launched torchrun"))
    config = _stage_config(tmp_path, 2)
    stage.train_prior(
        cutout_files,
        tmp_path / "model.pt",
        tmp_path / "loss.csv",
        tmp_path / "loss.png",
        tmp_path / "samples.png",
        config,
        gpus=2,
    )
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 2
    assert os.path.exists(tmp_path / "samples.png")
