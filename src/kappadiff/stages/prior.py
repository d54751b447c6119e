"""Stage ``train_prior``: train the diffusion prior on the simulated κ cut-outs.

Reads the memory-mapped cut-out files, trains (resuming exactly from
``<model dir>/checkpoint.pt`` when a previous run was killed), and writes the final
checkpoint (``model.pt``), the loss log (CSV), the loss curve and a grid of prior samples
beside held-out cut-outs (PNG).

Multi-GPU: when asked for more than one GPU and CUDA sees them, this function relaunches
itself under ``torchrun`` (``python -m kappadiff.stages.prior ARGS.json``), one process a
GPU, DistributedDataParallel; otherwise it trains in this process (GPU 0 or the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..diffusion.checkpoint import (
    Prior,
    load_checkpoint,
    load_prior,
    prior_from_state,
    save_checkpoint,
)
from ..diffusion.data import (
    CutoutSet,
    Normalisation,
    content_hash,
    fit_normalisation,
    open_cutouts,
    split_holdout,
)
from ..diffusion.process import make_schedule
from ..diffusion.sampler import ddim_sample, timestep_sequence
from ..diffusion.speed import Speedups
from ..diffusion.split_gibbs import covariance_levels, estimate_denoiser_covariance
from ..diffusion.train import (
    TrainSettings,
    TrainState,
    checkpoint_state,
    fingerprint,
    fingerprint_changes,
    new_state,
    restore_state,
    train,
)
from ..diffusion.unet import UNetConfig, count_parameters
from ..products import atomic_output, image_hdu, provenance, write_fits
from ..seeding import derive_seed

__all__ = [
    "draw_prior_maps",
    "draw_prior_samples",
    "draw_tarp_references",
    "settings_from_config",
    "train_prior",
]

log = logging.getLogger(__name__)

#: What each part of a checkpoint's fingerprint stands for, to say why it is not resumed.
FINGERPRINT_PARTS = {
    "network": "network (UNet config)",
    "schedule": "noise schedule",
    "settings": "training settings",
    "data": "training set (cut-out files, counts or content, normalisation or hold-out)",
}


def settings_from_config(config: Mapping[str, Any]) -> tuple[UNetConfig, Any, TrainSettings]:
    """``(UNetConfig, Schedule, TrainSettings)`` from the ``prior`` section (4 input bins)."""
    p = config["prior"]
    unet = UNetConfig(
        in_channels=4,
        base_channels=p["base_channels"],
        channel_mults=tuple(p["channel_mults"]),
        num_res_blocks=p["num_res_blocks"],
        attention_levels=tuple(p["attention_levels"]),
    )
    schedule = make_schedule(
        p["schedule"], p["timesteps"], p["sigmoid_start"], p["sigmoid_end"], p["sigmoid_tau"]
    )
    settings = TrainSettings(
        steps=p["train_steps"],
        batch_size=p["batch_size"],
        lr=p["lr"],
        warmup_steps=p["warmup_steps"],
        lr_schedule=p.get("lr_schedule", "constant"),
        weight_decay=p["weight_decay"],
        ema_decay=p["ema_decay"],
        grad_clip=p["grad_clip"],
        min_snr_gamma=p["min_snr_gamma"],
        bf16=p["bf16"],
        seed=derive_seed(config["seed"], "prior"),
    )
    return unet, schedule, settings


def draw_prior_samples(
    prior: Prior,
    n: int,
    ddim_steps: int,
    eta: float,
    seed: int,
    batch_size: int = 16,
    step_power: float = 1.0,
) -> np.ndarray:
    """``n`` unconditional κ samples ``[n, bin, npix, npix]`` (float32) with DDIM.

    ``npix`` is the side of the training cut-outs (``prior.npix``); ``ddim_steps`` network
    evaluations a sample (timesteps spaced by ``step_power``,
    :func:`kappadiff.diffusion.sampler.timestep_sequence`), drawn ``batch_size`` at a time from
    a generator seeded by ``seed``.
    """
    steps = timestep_sequence(prior.schedule.T, ddim_steps, step_power)
    gen = torch.Generator(device=prior.device).manual_seed(seed)
    out = []
    for lo in range(0, n, batch_size):
        b = min(batch_size, n - lo)
        shape = (b, prior.model.config.in_channels, prior.npix, prior.npix)
        x = ddim_sample(prior.model, prior.schedule, shape, steps, eta, gen)
        with torch.no_grad():
            out.append(prior.to_kappa(x).float().cpu().numpy())
    return np.concatenate(out)


def _save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _write_loss_csv(path: str | os.PathLike, losses: Sequence[float]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write("step,loss\n")
        for i, v in enumerate(losses, start=1):
            f.write(f"{i},{v:.8g}\n")


def _launch_torchrun(args: dict, n_proc: int, workdir: Path) -> None:
    path = workdir / ".train_prior_args.json"
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(args, f)
    torchrun = shutil.which("torchrun") or "torchrun"
    cmd = [torchrun, "--standalone", f"--nproc_per_node={n_proc}"]
    cmd += ["-m", "kappadiff.stages.prior", str(path)]
    log.info("launching %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def train_prior(
    cutouts: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    loss_csv: str | os.PathLike,
    loss_png: str | os.PathLike,
    samples_png: str | os.PathLike,
    config: Mapping[str, Any],
    threads: int = 1,
    gpus: int = 1,
) -> None:
    """Train the prior and write its products (see the module docstring).

    Parameters
    ----------
    cutouts
        Training cut-out files, float32 ``[patch, bin, row, col]``.
    model, loss_csv, loss_png, samples_png
        Output paths. The resumable checkpoint is ``checkpoint.pt`` beside ``model``.
    config
        The validated configuration (sections ``prior``, ``layout``, ``seed``).
    threads
        CPU threads for torch.
    gpus
        GPUs granted to the job; more than one (and visible) means a ``torchrun`` launch.
    """
    torch.set_num_threads(max(1, int(threads)))
    args = {
        "cutouts": [str(c) for c in cutouts],
        "model": str(model),
        "loss_csv": str(loss_csv),
        "loss_png": str(loss_png),
        "samples_png": str(samples_png),
        "config": dict(config),
        "threads": threads,
        "gpus": gpus,
    }
    in_torchrun = "LOCAL_RANK" in os.environ
    if gpus > 1 and not in_torchrun:
        if torch.cuda.is_available() and torch.cuda.device_count() >= gpus:
            _launch_torchrun(args, gpus, Path(model).parent)
            return
        log.warning(
            "%d GPUs requested but %d visible: training in one process",
            gpus,
            torch.cuda.device_count(),
        )
    if in_torchrun:
        local_rank = int(os.environ["LOCAL_RANK"])
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        _train(args, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _open_training_set(
    args: dict, in_channels: int, seed: int, device: torch.device
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """The cut-out arrays, the training and held-out indices, and the data fingerprint."""
    config = args["config"]
    p = config["prior"]
    arrays = open_cutouts(args["cutouts"], npix=config["layout"]["npix"])
    if arrays[0].shape[1] != in_channels:
        raise ValueError(
            f"{args['cutouts'][0]}: {arrays[0].shape[1]} tomographic bins, the prior expects "
            f"{in_channels}"
        )
    counts = [int(a.shape[0]) for a in arrays]
    train_idx, hold_idx = split_holdout(sum(counts), p["holdout_fraction"], seed)
    log.info(
        "%d cut-outs in %d files: %d for training, %d held out; device %s",
        sum(counts),
        len(arrays),
        len(train_idx),
        len(hold_idx),
        device,
    )
    data_info = {
        "files": [Path(c).name for c in args["cutouts"]],
        "counts": counts,
        "content": content_hash(arrays),
        "normalisation": p["normalisation"],
        "log_shift_factor": p["log_shift_factor"],
        "holdout_fraction": p["holdout_fraction"],
    }
    return arrays, train_idx, hold_idx, data_info


def _resume_or_start(
    ckpt_path: Path,
    fp: dict[str, str],
    arrays: list[np.ndarray],
    args: dict,
    unet_cfg: UNetConfig,
    settings: TrainSettings,
    device: torch.device,
) -> tuple[TrainState, Normalisation]:
    """The training state and normalisation: the checkpoint's where it can be resumed.

    A checkpoint is resumed only if its fingerprint equals ``fp`` and it is not past
    ``settings.steps``; otherwise the normalisation is fitted and training starts afresh.
    """
    p = args["config"]["prior"]
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        changed = fingerprint_changes(ckpt.get("fingerprint"), fp)
        if changed:
            log.warning(
                "%s was made with another %s: training afresh",
                ckpt_path,
                ", another ".join(FINGERPRINT_PARTS[c] for c in changed),
            )
        elif int(ckpt["step"]) > settings.steps:
            log.warning(
                "%s is at step %d, beyond prior.train_steps = %d: training afresh",
                ckpt_path,
                int(ckpt["step"]),
                settings.steps,
            )
        else:
            state = restore_state(ckpt, settings, device)
            normalisation = Normalisation.from_dict(ckpt["normalisation"])
            log.info("resuming from %s at step %d", ckpt_path, state.step)
            return state, normalisation
    normalisation = fit_normalisation(
        arrays, p["normalisation"], p["log_shift_factor"], names=args["cutouts"]
    )
    return new_state(unet_cfg, settings, device), normalisation


def _write_products(
    args: dict,
    final: dict,
    losses: Sequence[float],
    arrays: list[np.ndarray],
    reference_idx: np.ndarray,
    seed: int,
    device: torch.device,
) -> None:
    """Write the final checkpoint, the loss log and curve, and prior samples beside cut-outs.

    The sample grid shows ``prior.n_show`` DDIM draws (seeded from ``seed``) above the
    cut-outs ``reference_idx[:n_show]``.
    """
    p = args["config"]["prior"]
    save_checkpoint(args["model"], final)
    _write_loss_csv(args["loss_csv"], losses)

    from .. import plots

    _save_figure(plots.prior_loss_curve(losses), args["loss_png"])
    prior = prior_from_state(final, device)
    n_show = p["n_show"]
    samples = draw_prior_samples(
        prior, n_show, p["ddim_steps"], p["ddim_eta"], derive_seed(seed, "show")
    )
    references = CutoutSet(arrays, augment=False).read(reference_idx[:n_show])
    _save_figure(plots.prior_samples_grid(samples, references), args["samples_png"])


def _train(args: dict, device: torch.device) -> None:
    p = args["config"]["prior"]
    rank = dist.get_rank() if dist.is_initialized() else 0
    unet_cfg, schedule, settings = settings_from_config(args["config"])
    arrays, train_idx, hold_idx, data_info = _open_training_set(
        args, unet_cfg.in_channels, settings.seed, device
    )
    fp = fingerprint(unet_cfg, schedule, settings, data_info)
    ckpt_path = Path(args["model"]).with_name("checkpoint.pt")
    state, normalisation = _resume_or_start(ckpt_path, fp, arrays, args, unet_cfg, settings, device)
    log.info("UNet %s: %d parameters", unet_cfg, count_parameters(state.model))

    extra = {
        "fingerprint": fp,
        "holdout": torch.from_numpy(hold_idx),
        "data_files": data_info["files"],
        "data_counts": data_info["counts"],
    }
    npix = int(arrays[0].shape[-1])

    def write_checkpoint(s) -> None:
        if rank == 0:
            save_checkpoint(
                ckpt_path, checkpoint_state(s, schedule, normalisation, settings, npix, extra)
            )

    data = CutoutSet(arrays, train_idx, seed=settings.seed, augment=True)
    train(
        state,
        data,
        schedule,
        normalisation,
        settings,
        checkpoint_every=p["checkpoint_every"],
        on_checkpoint=write_checkpoint,
        speedups=Speedups.from_config(p),
    )
    if rank != 0:
        return
    final = checkpoint_state(state, schedule, normalisation, settings, npix, extra)
    reference_idx = hold_idx if len(hold_idx) else train_idx
    _write_products(args, final, state.losses, arrays, reference_idx, settings.seed, device)
    log.info("wrote %s after %d steps", args["model"], state.step)


def _main(argv: Sequence[str]) -> None:
    """Entry point of each ``torchrun`` process: ``python -m kappadiff.stages.prior ARGS.json``."""
    from ..logs import setup_logging

    setup_logging(None)
    with open(argv[0]) as f:
        args = json.load(f)
    train_prior(
        args["cutouts"],
        args["model"],
        args["loss_csv"],
        args["loss_png"],
        args["samples_png"],
        args["config"],
        threads=args["threads"],
        gpus=args["gpus"],
    )


if __name__ == "__main__":
    _main(sys.argv[1:])


# --------------------------------------------------------------------------------------
# unconditional draws for the validation: TARP references, prior statistics


def draw_prior_maps(
    model_path: str | os.PathLike, n: int, seed: int, config: Mapping[str, Any], threads: int
) -> tuple[np.ndarray, Any, int]:
    """``n`` unconditional κ maps ``[n, bin, npix, npix]`` (DDIM: ``validation.n_steps``,
    ``sampling.step_power``, η).

    On the job's GPU when there is one, 16 maps at a time (:func:`draw_prior_samples`); the
    validation's prior statistics and TARP references both draw this way. Returns the maps,
    the prior (for its hash) and the number of network evaluations a map.
    """
    torch.set_num_threads(max(1, int(threads)))
    npix = int(config["layout"]["npix"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = load_prior(model_path, device)
    if prior.npix != npix:
        raise ValueError(
            f"{model_path}: prior trained on {prior.npix} px patches, layout.npix = {npix}"
        )
    n_steps = int(config["validation"]["n_steps"])
    power = float(config["sampling"]["step_power"])
    eta = float(config["sampling"]["eta"])
    kappa = draw_prior_samples(prior, n, n_steps, eta, seed, step_power=power)
    return kappa, prior, n_steps  # timestep_sequence always gives n_steps distinct steps


def draw_tarp_references(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    threads: int = 1,
) -> Path:
    """Unconditional prior samples (DDIM) for TARP reference points.

    Writes HDU KAPPA ``[sample, bin, row, col]`` (``validation.n_references`` maps of the
    patch size), drawn with ``validation.n_steps`` steps and the sampling η.
    """
    seed = derive_seed(config["seed"], "tarp_references")
    n = int(config["validation"]["n_references"])
    kappa, prior, nfe = draw_prior_maps(model_path, n, seed, config, threads)
    header = provenance(config, seed=seed, model_hash=prior.hash or None, NFE=nfe)
    log.info("%d prior reference maps, %d steps", len(kappa), nfe)
    return write_fits(output_path, [image_hdu("KAPPA", kappa)], primary_header=header)


# --------------------------------------------------------------------------------------
# the denoiser covariance of the split-Gibbs prior step


def measure_denoiser_covariance(
    model_path: str | os.PathLike,
    cutout_paths: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    threads: int = 1,
) -> Path:
    """The prior's denoiser covariance ``Γ(ρ)``, the noise of the split-Gibbs prior step.

    Noises ``sampling.split_gibbs.covariance_maps`` training cut-outs (spread evenly over
    the files) at 40 levels (:func:`kappadiff.diffusion.split_gibbs.covariance_levels`) and
    writes the network's error spectrum per Fourier ring
    (:func:`kappadiff.diffusion.split_gibbs.estimate_denoiser_covariance`): HDU RHO
    ``[level]`` and GAMMA ``[level, ring, bin, bin]``, header NPIX and NMAPS.
    """
    torch.set_num_threads(max(1, int(threads)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = load_prior(model_path, device)
    prior.model.eval()
    files = open_cutouts(cutout_paths, prior.npix)
    index = [(f, i) for f, a in enumerate(files) for i in range(len(a))]
    n_maps = min(int(config["sampling"]["split_gibbs"]["covariance_maps"]), len(index))
    pick = np.linspace(0, len(index) - 1, n_maps).round().astype(int)
    kappa = np.stack([np.asarray(files[index[j][0]][index[j][1]]) for j in pick])
    maps = prior.from_kappa(torch.from_numpy(kappa))
    seed = derive_seed(config["seed"], "denoiser_covariance")
    levels = covariance_levels(prior.schedule)
    log.info("denoiser covariance: %d cut-outs at %d noise levels", n_maps, len(levels))

    def progress(done: int, total: int) -> None:
        log.info("noise level %d of %d measured", done, total)

    covariance = estimate_denoiser_covariance(
        prior.model,
        prior.schedule,
        maps,
        levels,
        torch.Generator(device=device).manual_seed(seed),
        progress=progress,
    )
    header = provenance(
        config, seed=seed, model_hash=prior.hash or None, NPIX=prior.npix, NMAPS=n_maps
    )
    hdus = [image_hdu("RHO", covariance.rho), image_hdu("GAMMA", covariance.rings)]
    return write_fits(output_path, hdus, primary_header=header)
