"""The score network: a time-conditioned UNet over the 4 tomographic κ bins jointly.

The backbone only maps ``(x_t, t) -> v``; the diffusion process (schedule, v-parameterisation,
loss) lives in :mod:`kappadiff.diffusion.process` and the sampler in
:mod:`kappadiff.diffusion.sampler`.

Architecture (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM"; the layout of lucidrains'
denoising-diffusion-pytorch that Boruah et al. 2025 fork): a convolutional encoder/decoder
with ``num_res_blocks`` residual blocks per resolution level, skip connections from every
encoder block to the decoder, self-attention at the levels listed in ``attention_levels`` and
in the bottleneck, and a sinusoidal embedding of the timestep injected into every residual
block as a per-channel scale and shift of its second normalisation (FiLM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNet",
    "UNetConfig",
    "attend",
    "count_parameters",
    "timestep_embedding",
    "unet_from_dict",
]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet`, stored in checkpoints as plain values.

    Attributes
    ----------
    in_channels
        Input and output channels (4 tomographic bins).
    base_channels
        Channels of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
    channel_mults
        Channel multiplier of each resolution level; each level after the first halves the
        resolution, so the input side must be divisible by ``2 ** (len(channel_mults) - 1)``.
    num_res_blocks
        Residual blocks per level in the encoder (the decoder has one more, as in ADM).
    attention_levels
        Indices of the levels with self-attention after each residual block (the bottleneck
        always has one).
    """

    in_channels: int = 4
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = field(default=(2,))

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mults):
                raise ValueError(
                    f"attention level {level} does not exist: the UNet has "
                    f"{len(self.channel_mults)} levels (channel_mults={self.channel_mults})"
                )

    def to_dict(self) -> dict:
        """Plain-value form (lists, ints) for a ``weights_only`` checkpoint."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        return d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, section 3.5).

    Parameters
    ----------
    t
        Timesteps, shape ``[B]`` (any numeric dtype).
    dim
        Embedding width (even).

    Returns
    -------
    Tensor ``[B, dim]``: ``[sin(t w_k), cos(t w_k)]`` with ``w_k = max_period^(-k / (dim/2))``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    # 8 groups as in ADM/lucidrains; fewer for the tiny test networks
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, then norm with time scale/shift, SiLU-conv, + skip."""

    takes_skip = False

    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        # zero-initialised last conv: every block starts as the identity (ADM), which
        # makes the short CPU trainings converge faster
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, head_channels: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = attend(self.qkv(self.norm(x)), self.heads, fused=x.is_cuda)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


def attend(qkv: torch.Tensor, heads: int, fused: bool) -> torch.Tensor:
    """Self-attention over pixels: ``qkv [b, 3c, h, w]`` → ``[b, heads, h w, c/heads]``.

    Parameters
    ----------
    qkv
        Queries, keys and values stacked along the channels.
    heads
        Number of heads; each attends with ``c/heads`` channels.
    fused
        Lay q, k and v out contiguously, as the fused kernels of
        ``scaled_dot_product_attention`` (flash, memory-efficient, cuDNN) require (unit
        stride along the head channels); the transposed views otherwise go to the math
        kernel, which materialises every ``(h w)²`` attention matrix. True on CUDA; the CPU
        keeps the views and its kernel, and so its results bit for bit.
    """
    b, c3, h, w = qkv.shape
    q, k, v = qkv.reshape(b, 3, heads, c3 // (3 * heads), h * w).unbind(1)
    # [b, heads, tokens, dim] for scaled_dot_product_attention
    q, k, v = (z.transpose(-1, -2) for z in (q, k, v))
    if fused:
        q, k, v = (z.contiguous() for z in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v)


class _Unit(nn.Module):
    """A residual block optionally followed by attention; ``takes_skip`` in the decoder."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, attention: bool, takes_skip: bool):
        super().__init__()
        self.block = ResBlock(c_in, c_out, t_dim)
        self.attn = Attention(c_out) if attention else nn.Identity()
        self.takes_skip = takes_skip

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.block(x, temb))


class _Down(nn.Module):
    takes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    takes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Time-conditioned UNet, ``model(x_t, t) -> v`` (same shape as ``x_t``).

    Parameters
    ----------
    config
        :class:`UNetConfig`; ``UNet(UNetConfig(base_channels=64, channel_mults=(1, 2, 4, 8),
        num_res_blocks=2, attention_levels=(3,)))`` is the reference (paper) network.

    Notes
    -----
    Inputs are ``[B, in_channels, n, n]`` with ``n`` divisible by ``2 ** (levels - 1)``;
    ``t`` is int64 ``[B]`` in ``[0, T - 1]``. Encoder skips are taken after the stem, every
    residual unit and every downsampling, and consumed by the ``num_res_blocks + 1`` units of
    each decoder level (Dhariwal & Nichol 2021, appendix A).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        t_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(config.in_channels, base, 3, padding=1)

        n_levels = len(config.channel_mults)
        skips = [base]
        ch = base
        self.down = nn.ModuleList()
        for level, mult in enumerate(config.channel_mults):
            attn = level in config.attention_levels
            for _ in range(config.num_res_blocks):
                self.down.append(_Unit(ch, base * mult, t_dim, attn, takes_skip=False))
                ch = base * mult
                skips.append(ch)
            if level < n_levels - 1:
                self.down.append(_Down(ch))
                skips.append(ch)

        self.mid1 = ResBlock(ch, ch, t_dim)
        self.mid_attn = Attention(ch)
        self.mid2 = ResBlock(ch, ch, t_dim)

        self.up = nn.ModuleList()
        for level in reversed(range(n_levels)):
            mult = config.channel_mults[level]
            attn = level in config.attention_levels
            for _ in range(config.num_res_blocks + 1):
                self.up.append(_Unit(ch + skips.pop(), base * mult, t_dim, attn, takes_skip=True))
                ch = base * mult
            if level > 0:
                self.up.append(_Up(ch))

        self.head = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(ch, config.in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (len(self.config.channel_mults) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"UNet input {tuple(x.shape[-2:])} is not divisible by {factor} "
                f"(2^(levels-1) for channel_mults={self.config.channel_mults})"
            )
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        h = self.stem(x)
        hs = [h]
        for unit in self.down:
            h = unit(h, temb)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for unit in self.up:
            if unit.takes_skip:
                h = torch.cat([h, hs.pop()], dim=1)
            h = unit(h, temb)
        return self.head(h)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unet_from_dict(d: dict | None = None, **overrides: int | Sequence[int]) -> UNet:
    """A :class:`UNet` from a checkpoint's plain-value config (plus ``overrides``)."""
    return UNet(UNetConfig(**{**(d or {}), **overrides}))
