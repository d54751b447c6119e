"""Throughput of DPS posterior sampling: samples per second and NFE per sample.

Compares (a) the reference scheme (every one of the T = 1000 timesteps, batch 1, fp32)
with (b) a faster setting (fewer DDIM steps, batched, optionally bf16), on the UNet of a
config (random weights: speed does not depend on them) or a trained checkpoint, and a
synthetic shear patch of the config's size with a masked corner.

Every network evaluation costs the same (forward and backward through the UNet plus the
likelihood), so a run of a long step sequence can be cut after ``--max-nfe`` evaluations
and its rate extrapolated to the full sequence; the script prints both.

    python benchmarks/bench_sampling.py --config config/config.yaml
    python benchmarks/bench_sampling.py --config config/desy3.yaml --device cuda \\
        --fast-steps 100 --fast-batch 16 --fast-precision bf16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml

from kappadiff.diffusion.checkpoint import load_prior
from kappadiff.diffusion.data import Normalisation
from kappadiff.diffusion.dps import dps_guidance, shear_data
from kappadiff.diffusion.process import make_schedule
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.diffusion.speed import prepare_network
from kappadiff.diffusion.unet import UNet, UNetConfig
from kappadiff.lensing import kappa_to_shear


def setup(args):
    """(network, schedule, to_kappa, data, npix) for the benchmark."""
    device = torch.device(args.device)
    if args.checkpoint:
        prior = load_prior(args.checkpoint, device)
        model, schedule, to_kappa, npix = prior.model, prior.schedule, prior.to_kappa, prior.npix
    else:
        with open(args.config) as f:
            cfg = yaml.safe_load(f)
        npix = cfg["layout"]["npix"]
        p = cfg.get("prior", {})
        keys = ("base_channels", "channel_mults", "num_res_blocks", "attention_levels")
        unet = UNetConfig(**{k: p[k] for k in keys if k in p})
        model = UNet(unet).to(device).eval()
        for q in model.parameters():
            q.requires_grad_(False)
        schedule = make_schedule(T=1000).to(device)
        norm = Normalisation("affine", torch.zeros(4), torch.full((4,), 0.02), torch.zeros(4))
        to_kappa = norm.to_kappa
    rng = np.random.default_rng(1)
    kappa = rng.normal(0, 0.02, (4, npix, npix))
    g1, g2 = kappa_to_shear(kappa)
    sigma = np.full(kappa.shape, 0.03)
    mask = np.ones(kappa.shape)
    mask[:, : npix // 4, : npix // 4] = 0
    data = shear_data(g1, g2, sigma, mask, device=device)
    return model, schedule, to_kappa, data, npix


def run(model, schedule, to_kappa, data, npix, n_steps, batch, precision, max_nfe, device):
    """Time one guided batch; returns (samples/s extrapolated to n_steps, NFE, seconds run)."""
    steps = timestep_sequence(schedule.T, n_steps)
    timed = steps[:max_nfe]
    guidance = dps_guidance(data, to_kappa, schedule.alphas_cumprod, steps)
    network = prepare_network(model, torch.device(device), precision)
    gen = torch.Generator(device=device).manual_seed(0)
    # one warm-up step (allocations, cuDNN autotuning) outside the timing
    ddim_sample(network, schedule, (batch, 4, npix, npix), timed[:1], 1.0, gen, guidance)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ddim_sample(network, schedule, (batch, 4, npix, npix), timed, 1.0, gen, guidance)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    per_nfe = seconds / len(timed)
    return batch / (per_nfe * len(steps)), len(steps), seconds, len(timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--checkpoint", help="trained prior (default: random UNet of --config)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-nfe", type=int, default=30, help="network evaluations timed per run")
    ap.add_argument("--fast-steps", type=int, default=50)
    ap.add_argument("--fast-batch", type=int, default=8)
    ap.add_argument("--fast-precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, schedule, to_kappa, data, npix = setup(args)
    print(f"device {args.device}, {args.threads} threads, patch {npix}x{npix}x4")
    settings = {
        "(a) reference": (1000, 1, "fp32"),
        "(b) fast": (args.fast_steps, args.fast_batch, args.fast_precision),
    }
    rates = {}
    for name, (n_steps, batch, precision) in settings.items():
        rate, nfe, seconds, timed = run(
            model, schedule, to_kappa, data, npix, n_steps, batch, precision, args.max_nfe,
            args.device,
        )  # fmt: skip
        rates[name] = rate
        print(
            f"{name}: {n_steps} steps, batch {batch}, {precision}: NFE/sample {nfe}, "
            f"{rate:.4g} samples/s = {60 * rate:.3g} samples/min "
            f"(timed {timed} NFE x batch {batch} in {seconds:.1f} s)"
        )
    print(f"speed-up (b)/(a): {rates['(b) fast'] / rates['(a) reference']:.1f}x")


if __name__ == "__main__":
    main()
