"""Prior checkpoints: atomic saving, ``weights_only`` loading, and the trained :class:`Prior`.

A checkpoint is a dict of tensors and plain values (no pickled classes), so
``torch.load(path, weights_only=True)`` reads it. Keys:

``format``
    ``"kappadiff-prior-1"``.
``unet``, ``schedule``
    Plain-value configs (:meth:`UNetConfig.to_dict`, :meth:`Schedule.to_dict`).
``normalisation``
    :meth:`Normalisation.to_dict` (per-bin mean/std/shift tensors), so sampling never
    needs the training data.
``model``, ``ema``
    State dicts of the raw and the EMA weights.
``optimizer``, ``step``, ``losses``, ``torch_rng``
    Everything an exact resume needs (data order and noise are functions of seed and step).
``npix``
    Side of the training cut-outs.
``settings``, ``fingerprint``, ``holdout``, ``data_files``, ``data_counts``
    Training settings, a hash of what must not change across a resume (network, schedule,
    settings and the training data's content, :func:`kappadiff.diffusion.train.fingerprint`),
    the held-out cut-out indices and the training files.

The model hash (``MODHASH`` of the products sampled with a prior, :func:`model_hash`) covers
only what determines the samples: the EMA weights, the network and schedule configs, the
normalisation and the cut-out side; not the optimiser or RNG state, so a resumed training
and an uninterrupted one that reach the same weights give the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from .data import Normalisation
from .process import Schedule, make_schedule
from .unet import UNet, UNetConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "Prior",
    "load_checkpoint",
    "load_prior",
    "model_hash",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "kappadiff-prior-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it onto ``path``."""
    # products (FITS I/O, astropy) only where a file is written or hashed, so that training
    # and sampling in memory need no astropy (e.g. benchmarks/bench_gpu.py on a bare GPU node)
    from ..products import atomic_output

    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises :class:`ProductError` naming the file if it is cut short, unreadable, holds
    anything but tensors and plain values, or is not a kappadiff prior checkpoint.
    """
    from ..products import ProductError  # astropy only when a checkpoint is read

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncation, corruption or a refused global
        # (weights_only's UnpicklingError): each is an unreadable file, named
        size = os.path.getsize(path)
        raise ProductError(
            f"{path}: not a readable torch checkpoint ({size} bytes; cut short?): {err}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ProductError(f"{path}: not a kappadiff prior checkpoint (format {found!r})")
    return state


def _update_hash(h: Any, value: Any) -> None:
    """Feed ``value`` (nested dicts/lists of tensors and plain values) to the hash ``h``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {list(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"dict {len(value)}:".encode())
        for key in sorted(value, key=str):
            h.update(f"{key!s}=".encode())
            _update_hash(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"list {len(value)}:".encode())
        for item in value:
            _update_hash(h, item)
    else:
        h.update(json.dumps(value).encode())


def model_hash(state: dict, length: int = 16) -> str:
    """Hash of what a checkpoint's samples depend on (the ``MODHASH`` card).

    SHA-256 (first ``length`` hex digits) of the EMA weights (names, dtypes, shapes and
    bytes), the ``unet`` and ``schedule`` configs, the ``normalisation`` and ``npix``. The
    raw weights, optimiser, RNG state, losses and bookkeeping are left out: they do not
    change a sample.
    """
    h = hashlib.sha256()
    _update_hash(h, {k: state[k] for k in ("ema", "unet", "schedule", "normalisation", "npix")})
    return h.hexdigest()[:length]


@dataclass
class Prior:
    """A trained prior ready for sampling.

    Attributes
    ----------
    model
        The UNet with EMA weights, in eval mode, ``model(x_t, t) -> v``.
    schedule
        The training noise schedule (tensors on the prior's device).
    normalisation
        Per-bin κ ↔ x map.
    npix
        Side of the training cut-outs, pixels (the shape samples are drawn at).
    step
        Training steps behind the weights.
    hash
        :func:`model_hash` of the checkpoint, for the ``MODHASH`` provenance card.
    """

    model: UNet
    schedule: Schedule
    normalisation: Normalisation
    npix: int
    step: int
    hash: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_kappa(self, x: torch.Tensor) -> torch.Tensor:
        """Network variable → κ, per bin (differentiable; ``[..., bin, n, n]``)."""
        return self.normalisation.to_kappa(x)

    def from_kappa(self, kappa: torch.Tensor) -> torch.Tensor:
        """κ → network variable, per bin (differentiable; ``[..., bin, n, n]``)."""
        return self.normalisation.from_kappa(kappa)


def prior_from_state(state: dict, device: str | torch.device = "cpu", hash: str = "") -> Prior:
    """Build the EMA :class:`Prior` from a loaded checkpoint dict."""
    model = UNet(UNetConfig(**state["unet"]))
    model.load_state_dict(state["ema"])
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    schedule = make_schedule(**state["schedule"]).to(device)
    return Prior(
        model,
        schedule,
        Normalisation.from_dict(state["normalisation"]),
        int(state["npix"]),
        int(state["step"]),
        hash,
    )


def load_prior(path: str | os.PathLike, device: str | torch.device = "cpu") -> Prior:
    """Load a trained prior (EMA weights, eval mode, gradients off for the parameters).

    Gradients still flow through the network to its input, as DPS needs.
    """
    state = load_checkpoint(path, "cpu")
    return prior_from_state(state, device, model_hash(state))
