"""Training throughput of the prior (cut-outs per second) and projected training time.

Times full optimiser steps (forward, backward, clipping, AdamW, EMA) of the default and the
paper-size UNet on random inputs, after warm-up steps, and projects the wall time of
50,000 steps at batch 24 (the paper's schedule). On CUDA the forward pass runs under bf16
autocast, as in training.

    python benchmarks/bench_train.py --device cpu --threads 2
    python benchmarks/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from kappadiff.diffusion.process import loss, make_schedule
from kappadiff.diffusion.train import TrainSettings, ema_update, new_state, step_noise
from kappadiff.diffusion.unet import UNetConfig, count_parameters

NETWORKS = {
    "default": (UNetConfig(4, 32, (1, 2, 4), 2, (2,)), 64),
    "paper": (UNetConfig(4, 64, (1, 2, 4, 8), 2, (3,)), 256),
}


def settings_for(
    steps: int, batch: int, bf16: bool = True, lr: float = 1e-4, warmup: int = 0
) -> TrainSettings:
    """Training settings of the benchmarks (the default config's, without warm-up)."""
    return TrainSettings(
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=warmup,
        weight_decay=0.0,
        ema_decay=0.995,
        grad_clip=1.0,
        min_snr_gamma=5.0,
        bf16=bf16,
        seed=0,
    )


def throughput(name: str, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    unet, npix = NETWORKS[name]
    settings = settings_for(steps, batch)
    state = new_state(unet, settings, device)
    schedule = make_schedule().to(device)
    x0 = torch.randn(batch, 4, npix, npix, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for i in range(warmup + steps):
        t, noise = step_noise(settings, schedule, i, tuple(x0.shape))
        t, noise = t.to(device), noise.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            value = loss(state.model, schedule, x0, t, noise, 5.0)
        state.optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)
        state.optimizer.step()
        ema_update(state.ema, state.model, 0.995)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    per_step = sorted(times)[len(times) // 2]  # median: robust to other jobs on the machine
    print(
        f"{name:8s} {npix}x{npix}x4  params {count_parameters(state.model) / 1e6:6.2f} M  "
        f"batch {batch:3d}  {per_step:8.3f} s/step  {batch / per_step:8.2f} cut-outs/s  "
        f"50k steps x 24: {50_000 * 24 / (batch / per_step) / 3600:8.1f} h"
    )
    return batch / per_step


def bf16_agreement(name: str, batch: int, device: torch.device) -> None:
    """Loss and gradient of one batch under bf16 autocast against fp32, same weights."""
    unet, npix = NETWORKS[name]
    settings = settings_for(1, batch)
    state = new_state(unet, settings, device)
    # the zero-initialised output convolutions would leave only the head with a gradient
    # (and the loss exactly equal): give every parameter a trained-like spread first
    with torch.no_grad():
        for p in state.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                   .to(device))  # fmt: skip
    schedule = make_schedule().to(device)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 4, npix, npix, generator=gen).to(device)
    t, noise = step_noise(settings, schedule, 0, tuple(x0.shape))
    t, noise = t.to(device), noise.to(device)
    out = {}
    for bf16 in (False, True):
        state.model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss(state.model, schedule, x0, t, noise, 5.0)
        value.backward()
        grad = torch.cat([p.grad.flatten().float() for p in state.model.parameters()])
        out[bf16] = (float(value.detach()), grad)
    (l32, g32), (l16, g16) = out[False], out[True]
    cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    rel = float((g16 - g32).norm() / g32.norm())
    print(
        f"{name:8s} bf16 vs fp32, batch {batch}: loss {l16:.5f} vs {l32:.5f} "
        f"(relative {abs(l16 - l32) / l32:.2e}); gradient cosine {cos:.5f}, "
        f"relative difference {rel:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per network")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=0, help="batch (0: 8/2 on CPU, 24 on GPU)")
    ap.add_argument("--networks", nargs="+", default=["default", "paper"])
    ap.add_argument("--bf16-check", action="store_true", help="compare bf16 and fp32 gradients")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {args.threads} threads")
    for name in args.networks:
        batch = args.batch or {"cpu": {"default": 8, "paper": 2}}.get(device.type, {}).get(name, 24)
        throughput(name, batch, args.steps, warmup=args.warmup, device=device)
        if args.bf16_check:
            bf16_agreement(name, batch, device)


if __name__ == "__main__":
    main()
