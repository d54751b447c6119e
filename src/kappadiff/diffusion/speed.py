"""How the network runs on a GPU: precision, channels-last layout, cuDNN autotuning, compilation.

None of these switches changes what the network computes, only how: on CUDA they change the
floating-point rounding of its output, on any other device they do nothing, so the CPU path
(tests, the default pipeline) stays bit for bit the plain eager network. Sampling
(``sampling.*``) and training (``prior.*``) take them from their config sections;
``benchmarks/bench_gpu.py`` measures each at paper size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config import SPEED_KEYS

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "Speedups",
    "compile_network",
    "prepare_network",
    "set_layout",
]

#: ``torch.compile`` modes: ``"none"`` (eager), ``"default"`` (Inductor's fused kernels),
#: ``"reduce-overhead"`` (also CUDA graphs, one per input shape), ``"max-autotune"`` and
#: ``"max-autotune-no-cudagraphs"`` (also timing candidate kernels at compile time, minutes).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")

#: Network arithmetic: autocast dtype, or None for float32 (``"tf32"``: float32 tensors with
#: TF32 matmuls and convolutions on CUDA).
PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Speedups:
    """The GPU speed switches of a config section (all off by default).

    Attributes
    ----------
    channels_last
        Hold convolution weights, and so the activations, in NHWC order: the layout of
        cuDNN's tensor-core kernels, which otherwise transpose NCHW tensors around them.
    compile
        ``torch.compile`` mode, one of :data:`COMPILE_MODES`. Compiling takes a minute or
        more per process and input shape (less from Inductor's on-disk cache on the same
        node), paid back only by jobs long enough.
    cudnn_benchmark
        Let cuDNN time its convolution algorithms once per input shape and keep the fastest
        (``torch.backends.cudnn.benchmark``; a process-wide setting).
    """

    channels_last: bool = False
    compile: str = "none"
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile = {self.compile!r}, expected one of {list(COMPILE_MODES)}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Speedups:
        """The switches of a ``sampling`` or ``prior`` section; an absent key is off."""
        return cls(**{k: section[k] for k in SPEED_KEYS if k in section})


def set_layout(model: torch.nn.Module, device: torch.device, speedups: Speedups) -> torch.nn.Module:
    """On CUDA, set cuDNN autotuning and convert ``model`` to channels-last (in place).

    On any other device nothing changes. Returns ``model``.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = speedups.cudnn_benchmark
        if speedups.channels_last:
            model.to(memory_format=torch.channels_last)
    return model


def compile_network(
    model: torch.nn.Module, device: torch.device, speedups: Speedups
) -> torch.nn.Module:
    """``torch.compile(model)`` in the mode of ``speedups`` on CUDA; ``model`` otherwise.

    The compiled module shares ``model``'s parameters; checkpoints are written from
    ``model`` itself, so their keys do not change.
    """
    if device.type != "cuda" or speedups.compile == "none":
        return model
    return torch.compile(model, mode=None if speedups.compile == "default" else speedups.compile)


class _Autocast(torch.nn.Module):
    """The network under autocast at ``dtype``, returning float32 (for the guidance)."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.model(x, t)
        return out.float()


def prepare_network(
    model: torch.nn.Module,
    device: torch.device,
    precision: str,
    speedups: Speedups | None = None,
) -> torch.nn.Module:
    """The sampling network: ``model`` at ``precision``, with ``speedups`` on CUDA.

    Parameters
    ----------
    model
        ``model(x_t, t) -> v``, on ``device``; converted in place by ``channels_last``.
    device
        The sampling device.
    precision
        One of :data:`PRECISIONS`: fp32, tf32 (TF32 matmuls on CUDA), or bf16 autocast.
    speedups
        Layout, autotuning and compilation (:class:`Speedups`), applied on CUDA only;
        None for none of them.

    Returns
    -------
    torch.nn.Module
        ``network(x_t, t) -> v`` (float32 under bf16 autocast), compiled around the
        autocast so that Inductor fuses the casts with the surrounding kernels.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"sampling.precision = {precision!r}, expected one of {list(PRECISIONS)}")
    if device.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    speedups = speedups or Speedups()
    dtype = PRECISIONS[precision]
    network = model if dtype is None else _Autocast(model, device.type, dtype)
    return compile_network(set_layout(network, device, speedups), device, speedups)
