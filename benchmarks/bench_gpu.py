"""GPU efficiency of DPS sampling and prior training at paper size, every speed variant in one run.

Measures, for the speed switches of :mod:`kappadiff.diffusion.speed` (the current code: eager,
NCHW, bf16 autocast; cuDNN autotuning; channels-last; larger batches; ``torch.compile`` in the
modes "default", "reduce-overhead" (CUDA graphs of the network's forward and backward) and
"max-autotune-no-cudagraphs"), DPS posterior samples per GPU-minute at 100 steps and training
steps per second, the fraction of the bf16 peak, compile times, the attention's SDPA backends,
where a step's time goes, and bf16 against fp32. Prints each figure as soon as it is measured
and rewrites ``results.json`` and ``results.md`` in ``--out`` after each, so a run cut short
keeps what it measured.

Method
------
* Network: the UNet of ``config/desy3.yaml``'s prior section on 256 x 256 x 4 patches, random
  weights perturbed by 0.02 N(0, 1) (the zero-initialised output layers would make every
  output 0, and the checks below void).
* DPS (the library's ``ddim_sample`` with ``dps_guidance``: eta = 1, scaled A(t), the 100-step
  sequence) costs the same at every step (one forward and one backward pass to the input), so
  single steps are timed one by one after warm-up steps (synchronised) and the median is
  extrapolated: samples per GPU-minute = 60 batch / (100 median step).
* Training: the library's ``train`` on synthetic cut-outs (data order, augmentation, bf16
  autocast, AdamW, clipping, EMA), median of the per-step times.
* FLOPs: ``FlopCounterMode`` (matmuls, convolutions, attention) on one forward pass, one DPS
  step and one training sample at batch 1. The fraction of the peak is given both as counted
  and with the convention of issue 24 (3 forward passes per DPS step and per training sample;
  with frozen weights a DPS step has no weight gradients and counts about 2).
* Per-step check: each variant's output v and DPS gradient on fixed inputs against eager fp32
  (relative L2 difference); eager bf16 against fp32 gives the scale of bf16 rounding.
* Posterior check (as ``benchmarks/calibrate_dps.py --bf16-check``): the default UNet of
  ``config/config.yaml``, trained here for a short while on Gaussian random fields, samples
  the posterior of synthetic shear patches (unscaled DPS, 50 steps, eta = 1) in fp32 and in
  each variant from the same seeds; printed is the rms over truths and pixels of
  (mean_variant - mean_fp32) / (std_fp32 sqrt(2/n)) per bin (0.02-0.05 for bf16 on the
  trained default prior in docs/benchmarks.md).
* Compiled variants run in child processes (nice 10) started together at the beginning: they
  compile while the eager variants are measured, then each is measured alone in turn. Their
  compile times are therefore upper bounds (several compiles share the CPU). A second child
  of the first variant, started once the first has compiled, times a compile from Inductor's
  warm on-disk cache, as a later job on the same node would pay it.

On the device (about 7 minutes)::

    PYTHONUNBUFFERED=1 PYTHONPATH=src timeout 500 python3 benchmarks/bench_gpu.py --out $OUT

``--tiny`` runs every part at toy size on the CPU (compiled variants with the "aot_eager"
backend, as the library compiles only on CUDA) to debug the script in about two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

# a sibling benchmark script: run as `python benchmarks/bench_gpu.py`, its folder is on sys.path
from bench_train import settings_for

import kappadiff.diffusion.train as train_module
import kappadiff.diffusion.unet as unet_module
from kappadiff.diffusion.data import CutoutSet, Normalisation
from kappadiff.diffusion.dps import chi2, dps_guidance, shear_data
from kappadiff.diffusion.gaussian import draw_gaussian
from kappadiff.diffusion.process import loss, make_schedule, x0_eps_from_v
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.diffusion.speed import Speedups, prepare_network
from kappadiff.diffusion.train import new_state, step_noise, train
from kappadiff.diffusion.unet import Attention, UNet, UNetConfig, count_parameters
from kappadiff.lensing import kappa_to_shear
from kappadiff.scaling import LikelihoodScaling

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = UNetConfig(4, 8, (1, 2), 1, (1,))
DPS_STEPS = 100  # the sequence whose rate is extrapolated (issue 24)
CHECK_STEPS = 50  # the posterior check's DDIM steps (as docs/benchmarks.md's bf16 check)


# --------------------------------------------------------------------------------------
# set-up shared by the parent and the child processes


class Context:
    """Sizes, device and the deterministic inputs every process rebuilds identically."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        if self.tiny:
            torch.set_num_threads(1)
            self.paper, self.paper_npix = TINY_NET, 16
            self.check, self.check_npix = TINY_NET, 16
        else:
            self.paper, self.paper_npix = net_from_config(ROOT / "config" / "desy3.yaml")
            self.check, self.check_npix = net_from_config(ROOT / "config" / "config.yaml")
        self.warmup, self.timed = (2, 2) if self.tiny else (3, 7)
        self.schedule = make_schedule(T=1000).to(self.device)
        # κ = 0.02 x per bin: the order of the default prior's normalisation
        self.norm = Normalisation("affine", torch.zeros(4), torch.full((4,), 0.02), torch.zeros(4))
        self.steps = timestep_sequence(self.schedule.T, DPS_STEPS)
        self.data = synthetic_shear(
            np.random.default_rng(1).normal(0, 0.02, (4, self.paper_npix, self.paper_npix)),
            self.device,
        )
        self.guidance = dps_guidance(
            self.data, self.norm.to_kappa, self.schedule.alphas_cumprod, self.steps
        )
        self._template: UNet | None = None
        self._reference: dict | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def paper_network(self) -> UNet:
        """A fresh copy of the perturbed paper-size UNet (weights frozen, eval mode)."""
        if self._template is None:
            self._template = perturbed(UNet(seeded(self.paper)), 0).to(self.device).eval()
            self._template.requires_grad_(False)
        return copy.deepcopy(self._template)

    def reference(self) -> dict:
        """v and DPS gradient of eager fp32 and eager bf16 on the probe inputs."""
        if self._reference is None:
            x = torch.randn(2, 4, self.paper_npix, self.paper_npix, generator=gen_cpu(5))
            self._reference = {
                p: probe(prepare_network(self.paper_network(), self.device, p), self, x)
                for p in ("fp32", "bf16")
            }
            self._reference["x"] = x
        return self._reference


def net_from_config(path: Path) -> tuple[UNetConfig, int]:
    """The UNet of a config file's prior section and its patch side."""
    cfg = yaml.safe_load(path.read_text())
    p = cfg["prior"]
    keys = ("base_channels", "channel_mults", "num_res_blocks", "attention_levels")
    return UNetConfig(4, *(p[k] for k in keys)), int(cfg["layout"]["npix"])


def seeded(cfg: UNetConfig) -> UNetConfig:
    torch.manual_seed(0)  # UNet(cfg) initialises from the global stream
    return cfg


def gen_cpu(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Add ``scale`` N(0, 1) to every parameter (drawn on the CPU: the same in every process)."""
    g = gen_cpu(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.device))
    return model


def synthetic_shear(kappa: np.ndarray, device: torch.device, seed: int | None = None):
    """Shear data of ``kappa [bin, n, n]``: σ = 0.03 per pixel, a masked corner, noise if seeded."""
    g1, g2 = kappa_to_shear(kappa)
    sigma = np.full(kappa.shape, 0.03)
    mask = np.ones(kappa.shape)
    n = kappa.shape[-1]
    mask[:, : n // 4, : n // 4] = 0
    if seed is not None:
        rng = np.random.default_rng(seed)
        g1 = g1 + sigma * rng.normal(size=g1.shape)
        g2 = g2 + sigma * rng.normal(size=g2.shape)
    return shear_data(g1 * mask, g2 * mask, sigma, mask, device=device)


def speedups_of(spec: dict) -> Speedups:
    return Speedups(spec["channels_last"], spec["compile"], spec["cudnn_benchmark"])


def build_network(model: torch.nn.Module, spec: dict, ctx: Context) -> torch.nn.Module:
    """The sampling network of a variant, as ``sample_patch`` builds it."""
    if ctx.cuda:
        return prepare_network(model, ctx.device, spec["precision"], speedups_of(spec))
    # --tiny on the CPU: the library keeps the CPU eager; compile with a CPU backend here so
    # that this script's compiled path runs end to end
    network = prepare_network(model, ctx.device, spec["precision"])
    if spec["compile"] != "none":
        network = torch.compile(network, backend=ctx.args.backend)
    return network


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def probe(network: torch.nn.Module, ctx: Context, x: torch.Tensor, batch: int = 2) -> dict:
    """v and ∇_x χ²/2 (the DPS gradient) of the first 2 of ``batch`` copies of ``x`` at t = 500."""
    xb = x.repeat(math.ceil(batch / len(x)), 1, 1, 1)[:batch].to(ctx.device).requires_grad_(True)
    tb = torch.full((batch,), 500, dtype=torch.long, device=ctx.device)
    with torch.enable_grad():
        v = network(xb, tb).float()
        x0, _ = x0_eps_from_v(ctx.schedule, xb, tb, v)
        c2 = chi2(ctx.norm.to_kappa(x0), ctx.data)
        (g,) = torch.autograd.grad(0.5 * c2.sum(), xb)
    return {"v": v.detach()[:2].double().cpu(), "grad": g[:2].double().cpu()}


def peak_gib(ctx: Context) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None


def reset_memory(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------------------
# the measurements


def dps_rate(spec: dict, ctx: Context, on_ready=None) -> dict:
    """Median DPS step of a variant at paper size; samples per GPU-minute at 100 steps."""
    reset_memory(ctx)
    ref = ctx.reference()
    network = build_network(ctx.paper_network(), spec, ctx)
    batch = spec["batch"]
    shape = (batch, 4, ctx.paper_npix, ctx.paper_npix)
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def step(i: int) -> float:
        t0 = time.perf_counter()
        ddim_sample(network, ctx.schedule, shape, ctx.steps[i : i + 1], 1.0, gen, ctx.guidance)
        ctx.sync()
        return time.perf_counter() - t0

    first = step(0)  # compilation, cuDNN autotuning, allocations
    if on_ready is not None:
        on_ready()
    for i in range(1, ctx.warmup):
        step(i)
    times = [step(i) for i in range(ctx.warmup, ctx.warmup + ctx.timed)]
    median = float(np.median(times))
    out = probe(network, ctx, ref["x"], batch)
    result = {
        "s_per_step": median,
        "step_spread": [float(min(times)), float(max(times))],
        "samples_per_min": 60 * batch / (DPS_STEPS * median),
        "first_step_s": first,
        "overhead_s": first - median,
        "peak_gib": peak_gib(ctx),
        "v_vs_fp32": rel(out["v"], ref["fp32"]["v"]),
        "grad_vs_fp32": rel(out["grad"], ref["fp32"]["grad"]),
        "v_vs_bf16": rel(out["v"], ref["bf16"]["v"]),
        "grad_vs_bf16": rel(out["grad"], ref["bf16"]["grad"]),
    }
    if spec.get("profile"):
        result["profile"] = profile_ops(
            lambda: ddim_sample(
                network, ctx.schedule, shape, ctx.steps[:1], 1.0, gen, ctx.guidance
            ),
            ctx,
        )
    return result


def synthetic_cutouts(ctx: Context, n: int) -> np.ndarray:
    """``n`` random 4-bin κ cut-outs at paper size: the data path's cost, nothing to learn."""
    rng = np.random.default_rng(3)
    return (0.02 * rng.standard_normal((n, 4, ctx.paper_npix, ctx.paper_npix))).astype(np.float32)


@contextlib.contextmanager
def strict_fp32():
    """float32 matmuls and convolutions without TF32 (cuDNN allows TF32 by default)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def compile_on_cpu(ctx: Context):
    """In --tiny, let ``train`` compile on the CPU with the debug backend (the library does not)."""

    def compiled(net, device, speedups):
        if speedups.compile == "none":
            return net
        return torch.compile(net, backend=ctx.args.backend)

    return compiled


def train_rate(spec: dict, ctx: Context, on_ready=None) -> dict:
    """Median training step of a variant at paper size (the library's ``train``)."""
    reset_memory(ctx)
    # torch's defaults, as in a training job (the sampling variants switch TF32 off); bf16
    # autocast runs the convolutions anyway
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    batch, n_steps = spec["batch"], 1 + ctx.warmup + ctx.timed
    settings = settings_for(n_steps, batch, spec["precision"] == "bf16")
    state = new_state(ctx.paper, settings, ctx.device)
    perturbed(state.model, 1)
    data = CutoutSet([synthetic_cutouts(ctx, max(2 * batch, 16))], seed=0, augment=True)
    # fp32 loss of the first batch: the bf16 variants' first loss against it
    kappa = torch.from_numpy(data.batch(0, batch))
    x0 = ctx.norm.from_kappa(kappa).to(ctx.device)
    t, noise = step_noise(settings, ctx.schedule, 0, tuple(x0.shape))
    with torch.no_grad(), strict_fp32():
        ref_loss = float(
            loss(state.model, ctx.schedule, x0, t.to(ctx.device), noise.to(ctx.device))
        )

    stamps = []
    t_start = time.perf_counter()

    def stamp(s) -> None:
        ctx.sync()
        if s.step == 1 and on_ready is not None:
            on_ready()  # compiled: wait for the parent's turn, outside the timing
        stamps.append(time.perf_counter())

    if not ctx.cuda and spec["compile"] != "none":
        train_module.compile_network = compile_on_cpu(ctx)
    train(
        state,
        data,
        ctx.schedule,
        ctx.norm,
        settings,
        checkpoint_every=1,
        on_checkpoint=stamp,
        progress=False,
        speedups=speedups_of(spec),
    )
    times = np.diff(stamps)[ctx.warmup - 1 :]
    median = float(np.median(times))
    return {
        "s_per_step": median,
        "step_spread": [float(times.min()), float(times.max())],
        "steps_per_s": 1 / median,
        "cutouts_per_s": batch / median,
        "first_step_s": stamps[0] - t_start,
        "overhead_s": stamps[0] - t_start - median,
        "peak_gib": peak_gib(ctx),
        "loss0": state.losses[0],
        "loss0_vs_fp32": abs(state.losses[0] - ref_loss) / ref_loss,
    }


def profile_ops(fn, ctx: Context, top: int = 12) -> list[dict]:
    """Operators by self time (GPU time on CUDA) over one call of ``fn``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        ctx.sync()
    names = ("self_device_time_total", "self_cuda_time_total") if ctx.cuda else ()
    names += ("self_cpu_time_total",)

    def self_time(e) -> float:
        return next(float(getattr(e, k)) for k in names if hasattr(e, k))

    events = [e for e in prof.key_averages() if self_time(e) > 0]
    total = sum(self_time(e) for e in events)
    events.sort(key=self_time, reverse=True)
    return [
        {"op": e.key, "ms": self_time(e) / 1e3, "share": self_time(e) / total} for e in events[:top]
    ]


def count_flops(ctx: Context) -> dict:
    """FLOPs of one forward pass, one DPS step and one training sample (batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    n = ctx.paper_npix
    x = torch.randn(1, 4, n, n, generator=gen_cpu(7)).to(ctx.device)
    t = torch.full((1,), 500, dtype=torch.long, device=ctx.device)
    model = ctx.paper_network()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x, t)
    forward = fc.get_total_flops()
    # the DPS step's network work: forward, then the gradient of χ²/2 to the input through
    # the frozen network (.backward(): the counter's module hooks do not run under
    # autograd.grad, which the sampler uses)
    xg = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        x0, _ = x0_eps_from_v(ctx.schedule, xg, t, model(xg, t))
        (0.5 * chi2(ctx.norm.to_kappa(x0), ctx.data).sum()).backward()
    dps = fc.get_total_flops()
    trainable = copy.deepcopy(model).requires_grad_(True).train()
    with FlopCounterMode(display=False) as fc:
        loss(trainable, ctx.schedule, x, t, torch.randn_like(x)).backward()
    return {
        "forward": forward,
        "dps_step": dps,
        "train_sample": fc.get_total_flops(),
        "parameters": count_parameters(trainable),
    }


def attention_bench(ctx: Context) -> list[dict]:
    """Forward + backward time of SDPA at the paper UNet's attention shapes, per layout/backend.

    "current" is the layout ``Attention.forward`` hands to SDPA (q, k, v transposed views,
    last-dimension stride = tokens); "contiguous" copies them first, as the fused kernels
    want. A forced backend that cannot take the inputs reports its error.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shapes = []
    model = ctx.paper_network()
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[1:])))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    with torch.no_grad():
        n = ctx.paper_npix
        model(
            torch.zeros(1, 4, n, n, device=ctx.device),
            torch.zeros(1, dtype=torch.long, device=ctx.device),
        )
    for h in hooks:
        h.remove()
    batch = 2 if ctx.tiny else 16
    reps = 2 if ctx.tiny else 10
    dtype = torch.bfloat16
    rows = []
    for c, hh, ww in sorted(set(shapes)):
        heads = max(1, c // 32)
        qkv = torch.randn(batch, 3, heads, c // heads, hh * ww, device=ctx.device, dtype=dtype)
        for layout in ("current", "contiguous"):
            backends = [
                None,
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH,
            ]
            for backend in backends:
                q, k, v = (z.detach().transpose(-1, -2) for z in qkv.unbind(1))
                if layout == "contiguous":
                    q, k, v = (z.contiguous() for z in (q, k, v))
                q, k, v = (z.requires_grad_(True) for z in (q, k, v))
                row = {
                    "shape": f"{c} ch, {hh}x{ww}, {heads} heads",
                    "count": shapes.count((c, hh, ww)),
                    "layout": layout,
                    "backend": "auto" if backend is None else backend.name,
                }
                try:
                    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                        times = []
                        for _ in range(reps + 1):
                            t0 = time.perf_counter()
                            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                            torch.autograd.grad(out.float().sum(), (q, k, v))
                            ctx.sync()
                            times.append(time.perf_counter() - t0)
                    row["ms"] = 1e3 * float(np.median(times[1:]))
                except Exception as e:  # a backend that cannot take these inputs
                    row["error"] = first_line(e)
                rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# the posterior check on a trained default-size network


class CheckProblem:
    """Gaussian-random-field truths, their noisy shear, and the check's DPS guidance."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        n = ctx.check_npix
        self.n_truth, self.n_samples = (2, 8) if ctx.tiny else (4, 64)
        self.cov = grf_covariance(n)
        self.steps = timestep_sequence(ctx.schedule.T, 6 if ctx.tiny else CHECK_STEPS)
        truths = normalised(draw_gaussian(self.cov, self.n_truth, np.random.default_rng(11)))
        kappa = ctx.norm.to_kappa(torch.from_numpy(truths)).numpy()
        self.guidance = []
        for i in range(self.n_truth):
            data = synthetic_shear(kappa[i], ctx.device, seed=100 + i)
            self.guidance.append(
                dps_guidance(
                    data,
                    ctx.norm.to_kappa,
                    ctx.schedule.alphas_cumprod,
                    self.steps,
                    scaling=LikelihoodScaling(),
                )
            )

    def network(self) -> UNet:
        model = UNet(seeded(self.ctx.check)).to(self.ctx.device).eval()
        return model.requires_grad_(False)

    def posterior(self, network: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, float]:
        """Posterior means and stds of κ ``[truth, bin, n, n]`` and the seconds it took."""
        ctx, n = self.ctx, self.ctx.check_npix
        means, stds = [], []
        t0 = time.perf_counter()
        for i in range(self.n_truth):
            gen = torch.Generator(device=ctx.device).manual_seed(1000 + i)
            shape = (self.n_samples, 4, n, n)
            x = ddim_sample(network, ctx.schedule, shape, self.steps, 1.0, gen, self.guidance[i])
            kappa = ctx.norm.to_kappa(x.float()).double()
            means.append(kappa.mean(0).cpu().numpy())
            stds.append(kappa.std(0).cpu().numpy())
        ctx.sync()
        return np.stack(means), np.stack(stds), time.perf_counter() - t0


def grf_covariance(n: int) -> np.ndarray:
    """``P(k)`` ``[n, n, 4, 4]`` of a red, bin-correlated Gaussian field (ρ = 0.8^|a−b|)."""
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    power = (k**2 + (2 / n) ** 2) ** -1.2
    corr = 0.8 ** np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    return (power[..., None, None] * corr).astype(np.complex128)


def normalised(maps: np.ndarray) -> np.ndarray:
    return (maps / maps.std(axis=(0, 2, 3), keepdims=True)).astype(np.float32)


def train_check_network(ctx: Context, problem: CheckProblem, seconds: float) -> dict:
    """Train the default UNet on the problem's field for about ``seconds``; EMA weights."""
    batch = 4 if ctx.tiny else 32
    fields = normalised(
        draw_gaussian(problem.cov, 32 if ctx.tiny else 1024, np.random.default_rng(12))
    )
    kappa = ctx.norm.to_kappa(torch.from_numpy(fields)).numpy()
    settings = dataclasses.replace(
        settings_for(10**6, batch, bf16=True, lr=1e-3, warmup=20), ema_decay=0.99
    )
    state = new_state(ctx.check, settings, ctx.device)
    data = CutoutSet([kappa], seed=0, augment=True)
    t0 = time.perf_counter()
    chunk = 5 if ctx.tiny else 50
    while time.perf_counter() - t0 < seconds:
        train(
            state,
            data,
            ctx.schedule,
            ctx.norm,
            settings,
            stop_at=state.step + chunk,
            progress=False,
            speedups=Speedups(cudnn_benchmark=True),
        )
    losses = state.losses
    return {
        "steps": state.step,
        "seconds": time.perf_counter() - t0,
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "weights": {k: v.detach().cpu() for k, v in state.ema.state_dict().items()},
    }


def posterior_run(
    spec: dict, ctx: Context, problem: CheckProblem, weights_path=None, on_ready=None
) -> dict:
    """Posterior means of a variant on the check problem, written next to ``weights_path``."""
    reset_memory(ctx)
    model = problem.network()
    network = build_network(model, spec, ctx)
    first = None
    if on_ready is not None:
        # compile with the untrained weights (the graph does not depend on their values),
        # then load the trained ones into the same parameters
        n = ctx.check_npix
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        t0 = time.perf_counter()
        ddim_sample(
            network,
            ctx.schedule,
            (problem.n_samples, 4, n, n),
            problem.steps[:1],
            1.0,
            gen,
            problem.guidance[0],
        )
        ctx.sync()
        first = time.perf_counter() - t0
        weights_path = on_ready()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    mean, std, seconds = problem.posterior(network)
    stem = Path(weights_path).with_name("".join(c if c.isalnum() else "_" for c in spec["name"]))
    np.save(f"{stem}_mean.npy", mean)
    np.save(f"{stem}_std.npy", std)
    return {
        "means": f"{stem}_mean.npy",
        "stds": f"{stem}_std.npy",
        "seconds": seconds,
        "samples_per_s": problem.n_truth * problem.n_samples / seconds,
        "first_step_s": first,
        "peak_gib": peak_gib(ctx),
    }


def mc_z(mean: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray, n: int) -> list[float]:
    """rms per bin of the mean difference over the Monte-Carlo error of a difference of means."""
    z = (mean - ref_mean) / (ref_std * np.sqrt(2.0 / n))
    return np.sqrt((z**2).mean(axis=(0, 2, 3))).tolist()


# --------------------------------------------------------------------------------------
# child processes: compiled variants


def run_child(spec: dict, args: argparse.Namespace) -> None:
    """Entry of a child: measure one compiled variant, pausing once compiled (READY/go)."""
    os.nice(10)  # compile on the CPU without starving the parent's measurements

    def on_ready():
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hold no cached blocks while the others measure
        print(f"READY {time.time()}", flush=True)
        line = sys.stdin.readline().split(maxsplit=1)
        return line[1].strip() if len(line) > 1 else None

    try:
        ctx = Context(args)
        if spec["task"] == "dps":
            ctx.reference()
        with attention_of(spec):
            if spec["task"] == "dps":
                result = dps_rate(spec, ctx, on_ready)
            elif spec["task"] == "train":
                result = train_rate(spec, ctx, on_ready)
            else:
                result = posterior_run(spec, ctx, CheckProblem(ctx), on_ready=on_ready)
    except Exception as e:
        traceback.print_exc()
        result = {"error": first_line(e)}
    print("RESULT " + json.dumps(result), flush=True)


class Child:
    """A compiled variant in its own process, streamed to our stdout with a prefix."""

    def __init__(self, spec: dict, argv: list[str]) -> None:
        self.spec, self.name = spec, spec["name"]
        self.started = time.perf_counter()
        self.ready_at: float | None = None
        self.result: dict | None = None
        self.tail: list[str] = []
        cmd = [sys.executable, "-u", __file__, *argv, "--child", json.dumps(spec)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: killed with its compile workers
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready_at = time.perf_counter()
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])
            else:
                self.tail = (self.tail + [line.rstrip()])[-20:]
                print(f"    [{self.name}] {line.rstrip()}", flush=True)

    def settled(self) -> bool:
        """Compiled and waiting for its turn, or exited."""
        return self.ready_at is not None or self.proc.poll() is not None

    def wait(self, condition, timeout: float) -> bool:
        end = time.perf_counter() + max(timeout, 0.0)
        while not condition():
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                return condition()
            if time.perf_counter() > end:
                return False
            time.sleep(0.2)
        return True

    def go(self, argument: str = "") -> bool:
        """Let it measure; False if it has gone meanwhile."""
        try:
            self.proc.stdin.write(f"go {argument}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        return True

    def kill(self) -> None:
        """Kill its process group, compile workers included, even after it has exited."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def failure(self) -> str:
        if self.proc.poll() is not None:
            lines = [s for s in self.tail if s.strip()]
            return f"exit {self.proc.returncode}: {lines[-1] if lines else 'no output'}"
        return "no result"


# --------------------------------------------------------------------------------------
# bookkeeping and output


def first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300]


class Report:
    """Results so far; printed as measured, rewritten to ``--out`` after each row."""

    def __init__(self, out: Path, info: dict) -> None:
        self.start = time.perf_counter()
        self.out = out
        self.data = {
            "info": info,
            "flops": None,
            "dps": [],
            "train": [],
            "posterior": [],
            "attention": [],
            "profiles": {},
            "skipped": [],
        }
        out.mkdir(parents=True, exist_ok=True)

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        elapsed = time.perf_counter() - self.start
        text = describe(section, row, self.data["flops"], self.peak)
        print(f"{elapsed:4.0f} s [{section}] {text}", flush=True)
        self.write()

    @property
    def peak(self) -> float:
        return self.data["info"]["peak_tflops"] * 1e12

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "results.md").write_text(markdown(self.data))


def fractions(section: str, row: dict, flops: dict | None, peak: float) -> tuple:
    """Fraction of the peak: counted FLOPs, and issue 24's 3-forward convention."""
    if not flops or "error" in row:
        return None, None
    if section == "dps":
        per_s = row["samples_per_min"] / 60 * DPS_STEPS
        return per_s * flops["dps_step"] / peak, per_s * 3 * flops["forward"] / peak
    per_s = row["cutouts_per_s"]
    return per_s * flops["train_sample"] / peak, per_s * 3 * flops["forward"] / peak


def describe(section: str, row: dict, flops: dict | None, peak: float) -> str:
    head = f"{row['name']}: batch {row.get('batch')}"
    if "error" in row:
        return f"{head}: {row['error']}"
    if section in ("dps", "train"):
        counted, issue = fractions(section, row, flops, peak)
        share = (
            ""
            if counted is None
            else f"; {100 * counted:.1f} % of peak counted, {100 * issue:.1f} % (3F)"
        )
        first = f"first step {row['first_step_s']:.1f} s{share}"
    if section == "dps":
        return (
            f"{head}: {row['s_per_step']:.4f} s/step, {row['samples_per_min']:.1f} samples"
            f"/GPU-min at {DPS_STEPS} steps; {first}"
            f"; v/grad vs fp32 {row['v_vs_fp32']:.2e}/{row['grad_vs_fp32']:.2e}"
            f", vs eager bf16 {row['v_vs_bf16']:.2e}/{row['grad_vs_bf16']:.2e}"
        )
    if section == "train":
        return (
            f"{head}: {row['s_per_step']:.4f} s/step, {row['steps_per_s']:.2f} steps/s, "
            f"{row['cutouts_per_s']:.1f} cut-outs/s; {first}"
            f"; first loss vs fp32 {row['loss0_vs_fp32']:.2e}"
        )
    if section == "posterior":
        z = ", ".join(f"{v:.3f}" for v in row.get("z", []))
        return f"{row['name']}: z rms per bin [{z}]; {row.get('samples_per_s', 0):.1f} samples/s"
    return json.dumps(row)


def fmt(v, spec: str = ".3g") -> str:
    return "" if v is None else format(v, spec)


def variant_rows(rows, task, flops, peak, rates, checks) -> list[str]:
    """Markdown rows of measured variants: name, batch, s/step, the task's ``rates(r)``,
    % of peak (counted, 3F), first step, peak memory and the task's ``checks(r)``; a
    variant that failed gets its error line."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('batch')} | {r['error']} |||||||")
            continue
        c, i = fractions(task, r, flops, peak)
        cells = [
            r["name"],
            r["batch"],
            f"{r['s_per_step']:.4f}",
            *rates(r),
            fmt(c and 100 * c, ".1f"),
            fmt(i and 100 * i, ".1f"),
            f"{r['first_step_s']:.1f}",
            fmt(r["peak_gib"], ".1f"),
            *checks(r),
        ]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return lines


def markdown(d: dict) -> str:
    info, flops = d["info"], d["flops"]
    peak = info["peak_tflops"] * 1e12
    lines = [
        f"# benchmarks/bench_gpu.py on {info['device_name']}",
        "",
        f"torch {info['torch']}, {info['started']}, command `{info['command']}`; "
        f"peak {info['peak_tflops']} TFLOP/s bf16 (`--peak-tflops`).",
        "",
    ]
    if flops:
        g = 1e9
        lines += [
            f"Paper UNet {flops['parameters'] / 1e6:.1f} M parameters, "
            f"{info['paper_npix']}² × 4: forward {flops['forward'] / g:.1f} GFLOP a sample; "
            f"DPS step {flops['dps_step'] / g:.1f} ({flops['dps_step'] / flops['forward']:.2f} "
            f"forward); training sample {flops['train_sample'] / g:.1f} "
            f"({flops['train_sample'] / flops['forward']:.2f} forward) (FlopCounterMode).",
            "",
        ]
    lines += [
        "## DPS sampling, 100 steps",
        "",
        "| variant | batch | s/step | samples/GPU-min | % peak counted | % peak (3F) | "
        "first step s | peak GiB | v / grad rel. diff. vs fp32 | vs eager bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += variant_rows(
        d["dps"],
        "dps",
        flops,
        peak,
        rates=lambda r: [f"{r['samples_per_min']:.1f}"],
        checks=lambda r: [
            f"{r['v_vs_fp32']:.1e} / {r['grad_vs_fp32']:.1e}",
            f"{r['v_vs_bf16']:.1e} / {r['grad_vs_bf16']:.1e}",
        ],
    )
    lines += [
        "",
        "## Training (library `train`: data, bf16 autocast, AdamW, clipping, EMA)",
        "",
        "| variant | batch | s/step | steps/s | cut-outs/s | % peak counted | "
        "% peak (3F) | first step s | peak GiB | first loss rel. diff. vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += variant_rows(
        d["train"],
        "train",
        flops,
        peak,
        rates=lambda r: [f"{r['steps_per_s']:.2f}", f"{r['cutouts_per_s']:.1f}"],
        checks=lambda r: [f"{r['loss0_vs_fp32']:.1e}"],
    )
    lines += ["", "## bf16 against fp32: posterior means (default UNet trained here)", ""]
    for r in d["posterior"]:
        if r["name"] == "training":
            lines.append(
                f"Check network: {r['steps']} steps in {r['seconds']:.0f} s, loss "
                f"{r['loss_first_50']:.3f} (first 50) → {r['loss_last_50']:.3f} (last 50); "
                f"{r['n_truth']} truths × {r['n_samples']} samples, {r['n_steps']} steps, "
                "unscaled DPS, η = 1, same seeds in every variant."
            )
            lines += [
                "",
                "| variant | rms (mean − mean fp32)/MC error, bins 1-4 | max | "
                "samples/s | first step s |",
                "|---|---|---|---|---|",
            ]
        elif "error" in r:
            lines.append(f"| {r['name']} | {r['error']} ||||")
        else:
            z = r.get("z") or []
            lines.append(
                f"| {r['name']} | {' '.join(f'{v:.3f}' for v in z)} | "
                f"{fmt(max(z) if z else None, '.3f')} | {r['samples_per_s']:.1f} | "
                f"{fmt(r.get('first_step_s'), '.1f')} |"
            )
    if d["attention"]:
        lines += [
            "",
            "## Attention (SDPA, bf16, forward + backward, batch 16) ms a call",
            "",
            "| shape (count) | layout | auto | flash | efficient | cuDNN | math |",
            "|---|---|---|---|---|---|---|",
        ]
        groups: dict = {}
        for r in d["attention"]:
            groups.setdefault((r["shape"], r["count"], r["layout"]), {})[r["backend"]] = (
                fmt(r.get("ms"), ".2f") if "ms" in r else "n/a"
            )
        for (shape, count, layout), b in groups.items():
            cells = [
                b.get(k, "")
                for k in (
                    "auto",
                    "FLASH_ATTENTION",
                    "EFFICIENT_ATTENTION",
                    "CUDNN_ATTENTION",
                    "MATH",
                )
            ]
            lines.append(f"| {shape} ({count}) | {layout} | " + " | ".join(cells) + " |")
        errors = {
            f"{r['layout']} {r['backend']}: {r['error']}" for r in d["attention"] if "error" in r
        }
        lines += [f"- {e}" for e in sorted(errors)]
    for name, ops in d["profiles"].items():
        lines += [
            "",
            f"## Where one DPS step's time goes: {name}",
            "",
            "| op | ms | share |",
            "|---|---|---|",
        ]
        lines += [f"| `{o['op']}` | {o['ms']:.2f} | {100 * o['share']:.1f} % |" for o in ops]
    if d["skipped"]:
        lines += ["", "## Not measured", ""] + [f"- {s}" for s in d["skipped"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# the run


ROW_KEYS = (
    "name",
    "batch",
    "precision",
    "attention",
    "channels_last",
    "cudnn_benchmark",
    "compile",
)


def variant(
    name,
    task,
    batch,
    *,
    precision="bf16",
    attention="fused",
    cl=False,
    bench=False,
    compile="none",
    profile=False,
) -> dict:
    """A measurement: ``attention="strided"`` is the attention of the code before the fused
    layout (main), patched in by :func:`attention_of`."""
    return {
        "name": name,
        "task": task,
        "batch": batch,
        "precision": precision,
        "attention": attention,
        "channels_last": cl,
        "cudnn_benchmark": bench,
        "compile": compile,
        "profile": profile,
    }


def plan(tiny: bool) -> dict:
    """The variants, in the order they are measured (most informative first)."""
    b16, b64, b128 = (2, 4, 6) if tiny else (16, 64, 128)
    t24, t48, t96 = (2, 4, 6) if tiny else (24, 48, 96)
    fast = {"cl": True, "bench": True}
    clb = "channels_last + cudnn_benchmark"
    return {
        "dps_eager": [
            variant("main (strided attention)", "dps", b16, attention="strided", profile=True),
            variant("eager", "dps", b16),
            variant("eager fp32", "dps", b16, precision="fp32"),
            variant("eager + cudnn_benchmark", "dps", b16, bench=True),
            variant("eager + channels_last", "dps", b16, cl=True),
            variant(f"eager + {clb}", "dps", b16, **fast, profile=True),
            variant(f"eager + {clb}", "dps", b64, **fast),
            variant(f"eager + {clb}", "dps", b128, **fast),
        ],
        "train_eager": [
            variant("main (strided attention)", "train", t24, attention="strided"),
            variant("eager", "train", t24),
            variant(f"eager + {clb}", "train", t24, **fast),
            variant(f"eager + {clb}", "train", t48, **fast),
            variant(f"eager + {clb}", "train", t96, **fast),
        ],
        "posterior_eager": [
            variant("fp32", "posterior", 0, precision="fp32"),
            variant("bf16 eager", "posterior", 0),
            variant(f"bf16 eager + {clb}", "posterior", 0, **fast),
        ],
        # in child processes, all compiling from the start; measured as they become ready,
        # in this order of preference
        "compiled": [
            variant(
                f"compile default + {clb}", "dps", b16, **fast, compile="default", profile=True
            ),
            variant(f"compile default + {clb}", "train", t24, **fast, compile="default"),
            variant(f"bf16 compile default + {clb}", "posterior", 0, **fast, compile="default"),
            variant(
                f"compile reduce-overhead + {clb}", "dps", b16, **fast, compile="reduce-overhead"
            ),
            variant(f"compile default + {clb}", "dps", b64, **fast, compile="default"),
            variant(f"compile default + {clb}", "train", t48, **fast, compile="default"),
        ],
        # started once the first compiled DPS variant has compiled (Inductor's cache filled)
        "warm": variant(
            f"compile default + {clb}, warm cache", "dps", b16, **fast, compile="default"
        ),
        # alone at the end, with the time left: autotuning takes minutes
        "last": variant(
            f"compile max-autotune-no-cudagraphs + {clb}",
            "dps",
            b16,
            **fast,
            compile="max-autotune-no-cudagraphs",
        ),
    }


@contextlib.contextmanager
def attention_of(spec: dict):
    """Run a variant with the attention of the code before the fused layout, if it asks."""
    if spec["attention"] != "strided":
        yield
        return
    fused_attend = unet_module.attend
    unet_module.attend = lambda qkv, heads, fused: fused_attend(qkv, heads, False)
    try:
        yield
    finally:
        unet_module.attend = fused_attend


def section_of(spec: dict) -> str:
    return {"dps": "dps", "train": "train", "posterior": "posterior"}[spec["task"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU, to debug")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all measurements (default 430; 110 with --tiny)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="dense bf16 peak of the GPU (issue 24: 790 for the H200)",
    )
    ap.add_argument(
        "--backend", default="aot_eager", help="torch.compile backend on the CPU (--tiny)"
    )
    ap.add_argument(
        "--check-train-s",
        type=float,
        default=None,
        help="seconds of training of the posterior check's network (default 25)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="measure only the variants whose 'task: name bBATCH' contains one of "
        "these (a rerun of what a first run left out)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.budget = args.budget or (110.0 if args.tiny else 430.0)
    args.check_train_s = args.check_train_s or (5.0 if args.tiny else 25.0)
    if args.tiny:
        args.device = "cpu"
    if args.child:
        run_child(json.loads(args.child), args)
        return
    # `timeout` sends SIGTERM: unwind, so that the children (own sessions) are killed and
    # the results written
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    Run(args).all()


class Run:
    """One benchmark run: the plan, the time budget, the child processes and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget
        self.ctx = Context(args)
        self.plan = plan(args.tiny)
        self.need = 10 if args.tiny else 60  # seconds an eager variant may need at most
        self.reserve = 5 if args.tiny else 20  # seconds to measure a compiled child
        self.argv = ["--out", args.out, "--device", args.device, "--backend", args.backend]
        self.argv += ["--tiny"] if args.tiny else []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        self.children: dict[int, Child] = {}
        self.problem = self.weights = self.reference = None
        # the warm-cache variant, until it is started
        self.warm = self.plan["warm"] if self.wanted(self.plan["warm"]) else None
        self.report = Report(Path(args.out), self.machine())

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def machine(self) -> dict:
        ctx, args = self.ctx, self.args
        info = {
            "torch": torch.__version__,
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if ctx.cuda else "CPU",
            "peak_tflops": args.peak_tflops,
            "paper_net": ctx.paper.to_dict(),
            "paper_npix": ctx.paper_npix,
            "check_net": ctx.check.to_dict(),
            "check_npix": ctx.check_npix,
            "warmup_steps": ctx.warmup,
            "timed_steps": ctx.timed,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        smi = shutil.which("nvidia-smi") if ctx.cuda else None
        if smi:
            q = "name,memory.total,clocks.max.sm,power.limit,driver_version"
            res = subprocess.run(
                [smi, f"--query-gpu={q}", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["nvidia_smi"] = res.stdout.strip()
        print(
            f"bench_gpu: {info['device_name']}, torch {info['torch']}, budget "
            f"{args.budget:.0f} s\n{info.get('nvidia_smi', '')}",
            flush=True,
        )
        return info

    def wanted(self, spec: dict) -> bool:
        key = f"{spec['task']}: {spec['name']} b{spec['batch']}"
        return self.args.only is None or any(s in key for s in self.args.only)

    def skip(self, spec: dict, why: str) -> None:
        text = f"{spec['task']}: {spec['name']}, batch {spec['batch']}: {why}"
        self.report.data["skipped"].append(text)
        print(f"[skipped] {text}", flush=True)
        self.report.write()

    def record(self, spec: dict, result: dict) -> None:
        row = {k: spec[k] for k in ROW_KEYS} | result
        if "profile" in row:
            key = f"{spec['name']}, batch {spec['batch']}"
            self.report.data["profiles"][key] = row.pop("profile")
        if spec["task"] == "posterior" and "means" in row and self.reference is not None:
            row["z"] = mc_z(np.load(row["means"]), *self.reference, self.problem.n_samples)
        self.report.add(section_of(spec), row)

    def all(self) -> None:
        compiled = [s for s in self.plan["compiled"] if self.wanted(s)]
        for spec in compiled:  # they compile while the eager variants are measured
            self.children[id(spec)] = Child(spec, self.argv)
        try:
            self.flops_and_attention()
            for spec in self.plan["dps_eager"] + self.plan["train_eager"]:
                self.eager(spec)
            self.posterior_check()
            self.compiled(compiled)
            last = self.plan["last"]
            if self.wanted(last):
                if self.left() < self.need:
                    self.skip(last, f"time budget ({self.left():.0f} s left)")
                else:
                    self.children[id(last)] = Child(last, self.argv)
                    self.compiled([last])
        finally:
            for child in self.children.values():
                child.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)
            seconds = time.perf_counter() - self.start
            self.report.data["info"]["seconds"] = seconds
            self.report.write()
            print(f"done in {seconds:.0f} s; {self.args.out}/results.md", flush=True)

    def flops_and_attention(self) -> None:
        try:
            f = self.report.data["flops"] = count_flops(self.ctx)
            print(
                f"[flops] forward {f['forward'] / 1e9:.1f} GFLOP, DPS step "
                f"{f['dps_step'] / 1e9:.1f}, training sample {f['train_sample'] / 1e9:.1f}; "
                f"{f['parameters'] / 1e6:.1f} M parameters",
                flush=True,
            )
        except Exception as e:
            traceback.print_exc()
            self.report.data["skipped"].append(f"FLOP count: {first_line(e)}")
        if self.args.only is None:
            try:
                for row in attention_bench(self.ctx):
                    self.report.data["attention"].append(row)
                    print(f"[attention] {row}", flush=True)
            except Exception as e:
                traceback.print_exc()
                self.report.data["skipped"].append(f"attention: {first_line(e)}")
        self.report.write()

    def eager(self, spec: dict) -> None:
        if not self.wanted(spec):
            return
        if self.left() < self.need:
            self.skip(spec, "time budget")
            return
        try:
            if spec["task"] == "dps":
                self.ctx.reference()  # with the library's attention, whatever the variant
            with attention_of(spec):
                result = (dps_rate if spec["task"] == "dps" else train_rate)(spec, self.ctx)
        except Exception as e:
            traceback.print_exc()
            result = {"error": first_line(e)}
            reset_memory(self.ctx)
        self.record(spec, result)

    def posterior_check(self) -> None:
        specs = [s for s in self.plan["posterior_eager"] if self.wanted(s)]
        if not specs:
            return
        if self.left() < self.need + self.args.check_train_s:
            for spec in specs:
                self.skip(spec, "time budget")
            return
        try:
            problem = CheckProblem(self.ctx)
            trained = train_check_network(self.ctx, problem, self.args.check_train_s)
            self.weights = self.tmp / "check_network.pt"
            torch.save(trained.pop("weights"), self.weights)
            trained.update(
                name="training",
                n_truth=problem.n_truth,
                n_samples=problem.n_samples,
                n_steps=len(problem.steps),
            )
            self.report.data["posterior"].append(trained)
            print(f"[posterior] check network: {trained}", flush=True)
            self.problem = problem
        except Exception as e:
            traceback.print_exc()
            self.report.data["skipped"].append(f"posterior check: {first_line(e)}")
            return
        for spec in specs:
            try:
                result = posterior_run(spec, self.ctx, self.problem, self.weights)
                if self.reference is None:  # the first is fp32
                    self.reference = (np.load(result["means"]), np.load(result["stds"]))
            except Exception as e:
                traceback.print_exc()
                result = {"error": first_line(e)}
            self.record(spec, result)
        reset_memory(self.ctx)

    def compiled(self, specs: list[dict]) -> None:
        """Measure children one at a time, the first ready in the plan's order, until time's up."""
        pending = list(specs)
        first_dps = next((s for s in pending if s["task"] == "dps"), None)
        while pending and self.left() > self.reserve:
            warm = self.warm
            if warm is not None and first_dps is not None:
                if self.children[id(first_dps)].ready_at is not None:
                    self.children[id(warm)] = Child(warm, self.argv)
                    pending.append(warm)
                    self.warm = None
            settled = [s for s in pending if self.children[id(s)].settled()]
            if not settled:
                time.sleep(0.5)
                continue
            spec = settled[0]
            pending.remove(spec)
            self.measure(spec, self.children[id(spec)])
        for spec in pending:
            child = self.children[id(spec)]
            child.kill()
            waited = time.perf_counter() - child.started
            self.record(spec, {"error": f"not compiled after {waited:.0f} s (time budget)"})
        if self.warm is not None:
            self.skip(self.warm, "the first compiled DPS variant did not compile in time")
            self.warm = None

    def measure(self, spec: dict, child: Child) -> None:
        """Let a compiled child measure, alone on the GPU, and record its row."""
        if child.ready_at is None:  # it exited before compiling
            child.kill()
            error = (child.result or {}).get("error") or child.failure()
            self.record(spec, {"error": error})
            return
        if spec["task"] == "posterior" and self.reference is None:
            child.kill()
            self.record(spec, {"error": "no fp32 posterior to compare with"})
            return
        started = child.go(str(self.weights or ""))
        if not started or not child.wait(lambda: child.result is not None, self.left() - 2):
            child.kill()
            self.record(spec, {"error": f"measurement not finished ({child.failure()})"})
            return
        child.kill()
        self.record(spec, {**child.result, "ready_after_s": child.ready_at - child.started})


if __name__ == "__main__":
    main()
