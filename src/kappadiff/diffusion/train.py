"""Training of the prior: AdamW, EMA, gradient clipping, bf16 autocast, exact resume, DDP.

Everything random in a step (which cut-outs, their flips/rotations, the timesteps and the
noise) is drawn from streams named by ``(seed, step)``, for the *global* batch. A process of
a distributed run takes its slice of that batch, so a run on W processes follows the same
trajectory as one process with the same global batch, and a run resumed from a checkpoint
at step k continues exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..seeding import derive_seed
from .checkpoint import CHECKPOINT_FORMAT
from .data import CutoutSet, Normalisation
from .process import Schedule, loss
from .speed import Speedups, compile_network, set_layout
from .unet import UNet, UNetConfig

__all__ = [
    "TrainSettings",
    "TrainState",
    "checkpoint_state",
    "ema_update",
    "fingerprint",
    "fingerprint_changes",
    "new_state",
    "restore_state",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (the ``prior`` config section's training keys).

    Attributes
    ----------
    steps
        Optimiser steps of the whole run.
    batch_size
        Global batch (split evenly over processes).
    lr
        AdamW peak learning rate, reached linearly over ``warmup_steps``.
    warmup_steps
        Linear learning-rate warm-up steps.
    lr_schedule
        After the warm-up: ``"constant"`` keeps the peak rate; ``"cosine"`` lowers it along
        a half cosine to zero at ``steps``, so that a run of a fixed budget ends with its
        weights annealed rather than still moving at the peak rate.
    weight_decay
        AdamW decoupled weight decay.
    ema_decay
        EMA decay; the effective decay is ``min(ema_decay, (1 + step) / (10 + step))`` so the
        average forgets the random initial weights early in training.
    grad_clip
        Maximum global gradient norm.
    min_snr_gamma
        Loss weighting (:func:`kappadiff.diffusion.process.loss_weight`).
    bf16
        bfloat16 autocast of the forward pass on CUDA (ignored on CPU).
    seed
        Seed of every random stream of the run.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    ema_decay: float
    grad_clip: float
    min_snr_gamma: float
    bf16: bool
    seed: int
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"prior.lr_schedule = {self.lr_schedule!r}: expected 'constant' or 'cosine'"
            )


@dataclass
class TrainState:
    """Mutable training state: raw and EMA networks, optimiser, step, per-step losses."""

    model: UNet
    ema: UNet
    optimizer: torch.optim.Optimizer
    step: int
    losses: list[float]


def fingerprint(
    unet: UNetConfig, schedule: Schedule, settings: TrainSettings, data: dict
) -> dict[str, str]:
    """Hashes of what a resumed run must share with the run that wrote the checkpoint.

    One hash per part, ``{"network", "schedule", "settings", "data"}``, so that a refused
    resume can say what changed (:func:`fingerprint_changes`). ``data`` describes the
    training set, its content included (:func:`kappadiff.diffusion.data.content_hash`).
    The total number of steps is excluded, so a finished training can be extended.
    """
    s = asdict(settings)
    s.pop("steps")
    if s["lr_schedule"] == "constant":  # the settings hash of runs from before the option
        s.pop("lr_schedule")
    parts = {"network": unet.to_dict(), "schedule": schedule.to_dict(), "settings": s, "data": data}

    def digest(value: object) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {name: digest(value) for name, value in parts.items()}


def fingerprint_changes(stored: object, current: dict[str, str]) -> list[str]:
    """The parts of ``current`` (a :func:`fingerprint`) that differ from a checkpoint's.

    A checkpoint written before fingerprints had parts differs in all of them.
    """
    if not isinstance(stored, dict):
        return list(current)
    return [name for name, value in current.items() if stored.get(name) != value]


def new_state(unet: UNetConfig, settings: TrainSettings, device: torch.device) -> TrainState:
    """Freshly initialised networks (seeded from ``settings.seed``) and optimiser."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(settings.seed, "prior-init"))
        model = UNet(unet)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    return TrainState(model, ema, optimizer, 0, [])


def checkpoint_state(
    state: TrainState,
    schedule: Schedule,
    normalisation: Normalisation,
    settings: TrainSettings,
    npix: int,
    extra: dict | None = None,
) -> dict:
    """The checkpoint dict (tensors and plain values only; see :mod:`.checkpoint`).

    ``npix`` is the side of the training cut-outs; ``extra`` adds stage bookkeeping.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "unet": state.model.config.to_dict(),
        "schedule": schedule.to_dict(),
        "normalisation": normalisation.to_dict(),
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "losses": torch.tensor(state.losses, dtype=torch.float64),
        "torch_rng": torch.get_rng_state(),
        "settings": asdict(settings),
        "npix": int(npix),
        **(extra or {}),
    }


def restore_state(ckpt: dict, settings: TrainSettings, device: torch.device) -> TrainState:
    """A :class:`TrainState` from a checkpoint dict, to continue training exactly."""
    state = new_state(UNetConfig(**ckpt["unet"]), settings, device)
    state.model.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = int(ckpt["step"])
    state.losses = [float(v) for v in ckpt["losses"]]
    torch.set_rng_state(ckpt["torch_rng"])
    return state


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``θ_ema ← d θ_ema + (1 − d) θ`` for every parameter and floating buffer."""
    for e, p in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1 - decay)


def _lr(settings: TrainSettings, step: int) -> float:
    warm = 1.0 if settings.warmup_steps <= 0 else min(1.0, (step + 1) / settings.warmup_steps)
    if settings.lr_schedule == "constant" or step < settings.warmup_steps:
        return settings.lr * warm
    span = max(settings.steps - settings.warmup_steps, 1)
    done = min((step - settings.warmup_steps) / span, 1.0)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def step_noise(
    settings: TrainSettings, schedule: Schedule, step: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps ``[B]`` and noise ``[B, …]`` of the global batch at ``step`` (CPU tensors)."""
    g = torch.Generator().manual_seed(derive_seed(settings.seed, "prior-noise", step))
    t = torch.randint(0, schedule.T, (shape[0],), generator=g)
    noise = torch.randn(shape, generator=g)
    return t, noise


def train(
    state: TrainState,
    data: CutoutSet,
    schedule: Schedule,
    normalisation: Normalisation,
    settings: TrainSettings,
    *,
    stop_at: int | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    progress: bool = True,
    speedups: Speedups | None = None,
) -> TrainState:
    """Train from ``state.step`` up to ``stop_at`` (default ``settings.steps``).

    Parameters
    ----------
    state
        From :func:`new_state` or :func:`restore_state`; modified in place.
    data
        Training cut-outs (κ); normalised here with ``normalisation``.
    schedule
        Noise schedule (any device).
    checkpoint_every, on_checkpoint
        ``on_checkpoint(state)`` is called (on every process; the caller writes on rank 0)
        after every ``checkpoint_every``-th step and at the end.
    progress
        Show a tqdm bar (rank 0).
    speedups
        GPU layout, autotuning and compilation of the network (:mod:`.speed`; nothing on
        CPU). ``state.model`` is converted in place; the compiled module only runs the steps,
        so checkpoints keep their keys.

    Notes
    -----
    Under ``torch.distributed`` (initialised by the caller, e.g. via ``torchrun``) the model
    is wrapped in DistributedDataParallel, each of the ``W`` processes trains on its
    ``batch_size / W`` slice of the global batch, and DDP's gradient average equals the
    single-process gradient of the global batch mean.
    """
    stop_at = settings.steps if stop_at is None else stop_at
    device = next(state.model.parameters()).device
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if settings.batch_size % world:
        raise ValueError(
            f"prior.batch_size = {settings.batch_size} is not divisible by {world} processes"
        )
    local = settings.batch_size // world
    part = slice(rank * local, (rank + 1) * local)
    speedups = speedups or Speedups()
    # the layout before DDP, which builds its gradient buckets from the parameters' strides;
    # compilation after it, so that DDP's hooks stay outside the compiled graph
    net: torch.nn.Module = set_layout(state.model, device, speedups)
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    net = compile_network(net, device, speedups)
    schedule = schedule.to(device)
    autocast = torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=settings.bf16 and device.type == "cuda",
    )
    state.model.train()
    bar = tqdm(
        total=stop_at,
        initial=state.step,
        disable=not progress or rank != 0,
        desc="train_prior",
        mininterval=10.0,
    )
    while state.step < stop_at:
        step = state.step
        kappa = data.batch(step, settings.batch_size, part)
        x0 = normalisation.from_kappa(torch.from_numpy(kappa)).to(device)
        t, noise = step_noise(settings, schedule, step, (settings.batch_size, *kappa.shape[1:]))
        t, noise = t[part].to(device), noise[part].to(device)
        for group in state.optimizer.param_groups:
            group["lr"] = _lr(settings, step)
        with autocast:
            value = loss(net, schedule, x0, t, noise, settings.min_snr_gamma)
        state.optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
        state.optimizer.step()
        ema_update(state.ema, state.model, min(settings.ema_decay, (1 + step) / (10 + step)))
        report = value.detach().double()
        if distributed:
            dist.all_reduce(report)
            report /= world
        state.losses.append(float(report))
        if not math.isfinite(state.losses[-1]):
            raise FloatingPointError(f"training loss is {state.losses[-1]} at step {step}")
        state.step += 1
        bar.update(1)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(state.losses[-50:]):.4f}")
        if on_checkpoint is not None and (
            (checkpoint_every and state.step % checkpoint_every == 0) or state.step == stop_at
        ):
            on_checkpoint(state)
    bar.close()
    state.model.eval()
    return state
