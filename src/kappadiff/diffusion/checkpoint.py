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
    Training settings, a hash of what must not change across a resume, the held-out
    cut-out indices and the training files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .data import Normalisation
from .process import Schedule, make_schedule
from .unet import UNet, UNetConfig

__all__ = ["CHECKPOINT_FORMAT", "Prior", "load_checkpoint", "load_prior", "save_checkpoint"]

CHECKPOINT_FORMAT = "kappadiff-prior-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it onto ``path``."""
    # products (FITS I/O, astropy) only where a file is written or hashed, so that training
    # and sampling in memory need no astropy (e.g. benchmarks/bench_gpu.py on a bare GPU node)
    from ..products import atomic_output

    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; raises ValueError naming a foreign file."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a kappadiff prior checkpoint (format {found!r})")
    return state


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
        Checkpoint file hash, for the ``MODHASH`` provenance card.
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
    from ..products import file_hash

    return prior_from_state(load_checkpoint(path, "cpu"), device, file_hash(path))
