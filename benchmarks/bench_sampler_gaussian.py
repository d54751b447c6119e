"""How much power the DDIM sampler itself loses, with the exact denoiser of a Gaussian field.

The training cut-outs' per-mode joint covariance ``P(k)`` (normalised per bin as the prior
normalises them, periodic approximation) defines a Gaussian field whose ideal denoiser is
known in closed form (:class:`kappadiff.diffusion.gaussian.GaussianDenoiser`). Sampling that
field with DDIM at the config's schedule and a few step counts, and comparing the binned
C_ℓ with exact draws of the same field, measures the sampler's error alone: a trained prior
sampled with the same steps cannot do better on near-Gaussian (large) scales. Each step count
is run with every timestep spacing of ``--powers`` (1: DDIM's even spacing; 3: the default
``sampling.step_power``).

    python benchmarks/bench_sampler_gaussian.py --config config/config.yaml \\
        --cutouts results/training/sim000_cutouts.npy --steps 50 200 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml

from kappadiff import stats
from kappadiff.diffusion.gaussian import GaussianDenoiser, draw_gaussian, mode_covariance
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.stages.prior import settings_from_config
from kappadiff.stats import log_ell_bins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--cutouts", default="results/training/sim000_cutouts.npy")
    ap.add_argument("--n-cutouts", type=int, default=1000, help="cut-outs for P(k)")
    ap.add_argument("--n-maps", type=int, default=64, help="draws per step count")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument(
        "--powers", type=float, nargs="+", default=[1.0, 3.0], help="timestep spacing powers"
    )
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        config = yaml.safe_load(f)
    _, schedule, _ = settings_from_config(config)
    npix = int(config["layout"]["npix"])
    scale = float(config["layout"]["pixel_scale_arcmin"])
    edges = log_ell_bins(npix, scale, int(config["validation"]["n_ell_bins"]))

    cut = np.load(args.cutouts, mmap_mode="r")
    if cut.ndim != 4 or cut.shape[-1] != npix:
        raise SystemExit(f"{args.cutouts}: shape {cut.shape}, expected [N, bins, {npix}, {npix}]")
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(cut.shape[0], min(args.n_cutouts, cut.shape[0]), replace=False))
    maps = np.asarray(cut[pick], dtype=np.float64)
    maps = (maps - maps.mean(axis=(0, 2, 3), keepdims=True)) / maps.std(
        axis=(0, 2, 3), keepdims=True
    )
    cov = mode_covariance(maps)

    def spectrum(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=(-2, -1), keepdims=True)
        return stats.power_spectrum_flat(x, scale, edges)[1].mean(axis=0)

    ell = stats.power_spectrum_flat(maps[:1], scale, edges)[0]
    exact = spectrum(draw_gaussian(cov, args.n_maps * 4, rng))
    print(f"config {args.config}: schedule {schedule.name} T = {schedule.T}, {npix} px of {scale}′")
    print(f"P(k) from {len(pick)} cut-outs of {args.cutouts}; {args.n_maps} draws a row")
    print("ell  ", np.array2string(np.round(ell).astype(int), max_line_width=200))
    print("exact Gaussian draws / cut-outs (periodic model of non-periodic maps):")
    cut_cl = spectrum(maps)
    for b in range(cov.shape[-1]):
        print(
            f"  bin {b + 1}", np.array2string(np.round(exact[b] / cut_cl[b], 3), max_line_width=200)
        )
    model = GaussianDenoiser(cov, schedule)
    for power in args.powers:
        for n_steps in args.steps:
            steps = timestep_sequence(schedule.T, n_steps, power)
            gen = torch.Generator().manual_seed(args.seed)
            t0 = time.perf_counter()
            shape = (args.n_maps, cov.shape[-1], npix, npix)
            cl = spectrum(
                ddim_sample(model, schedule, shape, steps, args.eta, gen).double().numpy()
            )
            print(
                f"DDIM {len(steps)} steps, power {power} (eta {args.eta}), first t = {steps[:4]}: "
                f"sampled / exact C_l ({time.perf_counter() - t0:.1f} s)"
            )
            for b in range(cov.shape[-1]):
                ratio = np.array2string(np.round(cl[b] / exact[b], 3), max_line_width=200)
                print(f"  bin {b + 1}", ratio)


if __name__ == "__main__":
    main()
