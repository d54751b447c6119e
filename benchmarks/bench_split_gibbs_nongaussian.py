"""Split Gibbs without data on a non-Gaussian prior whose denoiser is exact: the sampler's own loss.

The prior is a map of independent, identically distributed shifted-lognormal pixels
(``x = (e^{σg} − e^{σ²/2})/norm``, ``g`` standard normal, normalised to zero mean and unit
variance; skewness 2.24 for σ = 0.6), so ``E[x_0 | x_t]`` is a one-dimensional integral per
pixel: the "network" here is that integral by quadrature (1,200 nodes, tabulated on 6,001
values of ``x_t`` per timestep and interpolated), exact to far below the Monte-Carlo error.
The denoiser covariance Γ is measured on ``--n-cov-maps`` prior maps by
:func:`kappadiff.diffusion.split_gibbs.estimate_denoiser_covariance`, as the pipeline measures
the trained network's.

Without data (an exact data step whose shear weights are all zero, so ``z = x + ρ ε``) the
chain's draws should be prior draws whatever the schedule: every loss of variance, skewness
or power is the sampler's, not a prior's. For each schedule
``SWEEPSxCALLS@LAST_RATIO[+FINAL_STEPS][:FLOOR]`` (ρ from 10 to ``FLOOR``, every prior step
but the last ``CALLS`` network calls down to ``LAST_RATIO`` × ρ, the last ``FINAL_STEPS``
calls down to ρ = 0.01 and the clean map) it prints, over ``--chains`` chains of 16 × 16 maps,
against as many fresh prior maps: the pixel variance ratio, the skewness, the ratio of the
power in the Fourier rings ``|k|`` = 1–8 (min–max), and the scatter of the per-map variance.
The rows ``one reverse diffusion`` are a single sweep at ρ = 10 whose prior step goes to the
clean map in 20, 40 and 100 calls: the prior step's own loss, and with 100 calls the
control that the denoiser and the prior step are right.

    python benchmarks/bench_split_gibbs_nongaussian.py
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from kappadiff.diffusion.dps import ShearData
from kappadiff.diffusion.process import Schedule, make_schedule
from kappadiff.diffusion.split_gibbs import (
    ExactDataStep,
    SplitGibbsPlan,
    _ring_index,
    covariance_levels,
    estimate_denoiser_covariance,
    split_gibbs_sample,
)

NPIX = 16


class LognormalPixelDenoiser(torch.nn.Module):
    """``model(x_t, t) -> v`` of the exact posterior mean of iid shifted-lognormal pixels."""

    def __init__(self, sigma: float, schedule: Schedule, nodes: int = 1200) -> None:
        super().__init__()
        g = np.linspace(-6.0, 6.0, nodes)
        weight = np.exp(-0.5 * g**2)
        norm = math.sqrt((math.exp(sigma**2) - 1.0) * math.exp(sigma**2))
        self.values = (np.exp(sigma * g) - math.exp(sigma**2 / 2)) / norm
        self.log_weight = np.log(weight / weight.sum())
        self.sigma, self.norm = sigma, norm
        self.abar = schedule.alphas_cumprod.double().cpu().numpy()
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        return ((torch.exp(self.sigma * g) - math.exp(self.sigma**2 / 2)) / self.norm).float()

    def _table(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """``x̂_0`` on a grid of ``x_t``: the posterior mean over the quadrature nodes."""
        if t not in self.tables:
            a, s = math.sqrt(self.abar[t]), math.sqrt(1.0 - self.abar[t])
            grid = np.linspace(a * self.values.min() - 8 * s, a * self.values.max() + 8 * s, 6001)
            x0 = np.empty_like(grid)
            for first in range(0, grid.size, 1024):
                u = grid[first : first + 1024, None]
                ll = self.log_weight[None] - 0.5 * ((u - a * self.values[None]) / s) ** 2
                w = np.exp(ll - ll.max(axis=1, keepdims=True))
                x0[first : first + 1024] = (w @ self.values) / w.sum(axis=1)
            self.tables[t] = grid, x0
        return self.tables[t]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float64)
        for value in torch.unique(t).tolist():
            sel = t == value
            grid, table = self._table(int(value))
            u = x[sel].double().numpy()
            x0 = np.interp(u, grid, table)
            a, s = math.sqrt(self.abar[value]), math.sqrt(1.0 - self.abar[value])
            out[sel] = torch.from_numpy((a * u - x0) / s)
        return out.float()


def no_data(shape: tuple[int, ...]) -> ExactDataStep:
    """An exact data step with no data (all shear weights zero): ``z = x + ρ ε``."""
    zero = torch.zeros(shape)
    data = ShearData(zero, zero, zero, torch.zeros(shape[0]))
    return ExactDataStep(data, torch.ones(shape[0]), torch.zeros(shape[0]))


def ring_power(x: torch.Tensor) -> np.ndarray:
    """Mean power per integer ring ``|k|`` of maps ``[N, 1, n, n]``."""
    ring = _ring_index(x.shape[-1]).ravel()
    p = (torch.fft.fft2(x.double()).abs() ** 2).mean(dim=(0, 1)).numpy().ravel()
    return np.bincount(ring, p) / np.bincount(ring) / x.shape[-1] ** 2


def skewness(x: torch.Tensor) -> float:
    x = x.double()
    return float(((x - x.mean()) ** 3).mean() / x.var() ** 1.5)


def plan_of(spec: str, schedule: Schedule) -> SplitGibbsPlan:
    """``SWEEPSxCALLS@LAST_RATIO[+FINAL_STEPS][:FLOOR]``: ρ 10 → FLOOR (0.1), final to 0.01."""
    spec, _, floor = spec.partition(":")
    spec, _, final = spec.partition("+")
    calls, ratio = spec.split("@")
    sweeps, steps = (int(v) for v in calls.split("x"))
    return SplitGibbsPlan.make(
        schedule, sweeps, 10.0, float(floor or 0.1), steps, float(ratio),
        int(final) if final else steps + 1, 0.01,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--schedules",
        default="10x12@0.2:0.1,30x4@0.3:0.1,10x4@0.3+100:0.1,10x4@0.3+100:1,10x8@0.3+100:1,"
        "10x4@0.3+100:2.5,10x4@0.1+100:2.5",
        help="comma-separated SWEEPSxCALLS@LAST_RATIO[+FINAL_STEPS][:FLOOR] (ρ 10 → FLOOR)",
    )
    ap.add_argument("--sigma", type=float, default=0.6, help="lognormal σ of the pixels")
    ap.add_argument("--chains", type=int, default=256)
    ap.add_argument("--n-cov-maps", type=int, default=512)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    schedule = make_schedule("sigmoid", 1000, -5.0, 3.0, 1.0)
    model = LognormalPixelDenoiser(args.sigma, schedule)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.chains, 1, NPIX, NPIX)
    t0 = time.perf_counter()
    cov_maps = model.draw((args.n_cov_maps, 1, NPIX, NPIX), gen)
    covariance = estimate_denoiser_covariance(
        model, schedule, cov_maps, covariance_levels(schedule), gen, batch_size=64
    )
    print(f"denoiser covariance on {args.n_cov_maps} prior maps: {time.perf_counter() - t0:.0f} s")
    reference = model.draw(shape, gen)
    ref_power = ring_power(reference)[1:9]
    print(
        f"\n{args.chains} chains of {NPIX}² iid lognormal pixels (σ = {args.sigma}), no data, "
        f"ρ 10 → 0.1; prior skewness {skewness(reference):+.2f}, per-map variance sd "
        f"{float(reference.double().var(dim=(1, 2, 3)).std()):.3f}\n"
    )
    head = "| schedule | NFE | variance ratio | skewness | ring power, rings 1–8 | per-map var sd"
    print(head + " | s |\n|---|---|---|---|---|---|---|")
    rows = [("one reverse diffusion, 20 calls", plan_of("1x1@0.5+20:10", schedule))]
    rows += [("one reverse diffusion, 40 calls", plan_of("1x1@0.5+40:10", schedule))]
    rows += [("one reverse diffusion, 100 calls", plan_of("1x1@0.5+100:10", schedule))]
    rows += [(spec, plan_of(spec, schedule)) for spec in args.schedules.split(",")]
    for name, plan in rows:
        t0 = time.perf_counter()
        x = split_gibbs_sample(model, schedule, covariance, no_data(shape[1:]), shape, plan, gen)
        power = ring_power(x)[1:9] / ref_power
        print(
            f"| {name} | {plan.nfe} | {float(x.double().var() / reference.double().var()):.3f} "
            f"| {skewness(x):+.2f} | {power.min():.2f}–{power.max():.2f} "
            f"| {float(x.double().var(dim=(1, 2, 3)).std()):.3f} "
            f"| {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
