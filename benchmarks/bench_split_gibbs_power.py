"""Where split Gibbs's posterior power goes with the trained prior: reverse diffusions, chains.

On the validation mocks the split-Gibbs samples of bin 1 have 0.73–0.83 of the truths' C_ℓ at
ℓ ≥ 750 (``bench_split_gibbs_mocks.py``). This script splits that loss into its parts, by
Fourier ring band ``|k|`` (ℓ = |k| ℓ_f), per tomographic bin, with nothing but the prior:

* **the truths against the training ensemble**: the band power of the mock truths over that
  of ``--n-ref`` training cut-outs, and the 5–95 % range of the mean of as many randomly
  chosen cut-outs as there are truths (how typical the validation patches are);
* with ``--samples``, the split-Gibbs samples that ``bench_split_gibbs_mocks.py`` saved,
  over the ensemble;
* **one reverse diffusion** from ``z = x_0 + ρ ε`` (``--rho``, the split-Gibbs floor of the
  default mocks) to the clean map in ``--final-steps`` calls, the last sweep of a
  split-Gibbs draw: with the pipeline's Gaussian-Γ steps (:func:`prior_step`, a draw of
  ``p(x_0 | z)``), and with the probability-flow ODE (DDIM, η = 0: a deterministic map, not a
  draw of ``p(x_0 | z)``, shown for the network's own fidelity); output power over that of
  the ``x_0`` themselves, for training cut-outs and, with ``--truths``, the mock truths;
* **the network's second moments** (``--parts moments``): on the ensemble's cut-outs at
  ρ = 0.1–3, per band, Γ/P (the error spectrum), ``(Var x̂_0 + Γ)/P`` (1 when the denoised
  maps and the error add up to the prior's power, as for an exact denoiser) and
  ``Cov(x_0 − x̂_0, u)/P`` (0 when the error is uncorrelated with the noisy input);
* **the network's unconditional draws** (``--parts unconditional``): a reverse diffusion from
  pure noise (``t = T − 1``) in ``--noise-steps`` calls, with the Gaussian-Γ steps (a
  stochastic sampler, as every split-Gibbs prior step) and with the probability-flow ODE.
  For an exact denoiser both draw the prior; where they part, the network's denoiser is not
  that of any one distribution, and a stochastic sampler inherits the Γ-steps' row;
* **a Gaussian start** (``--parts gaussian``): ``z = g + ρ ε`` with ``g`` an exact draw of
  the Gaussian field of the ensemble's mode covariance (:func:`mode_covariance`), then the
  same reverse diffusion as from cut-outs: what the network makes of a state with the
  prior's second moments but none of its non-Gaussian structure (an annealing by exact
  Gaussian steps down to the floor would hand it such a state);
* **chains without data** (every shear weight zero, so the chain's draws should be prior
  draws) for each schedule ``SWEEPSxCALLS@LAST_RATIO[+FINAL_STEPS][:FLOOR]`` (ρ from 10 to
  ``FLOOR``; as ``bench_split_gibbs_nongaussian.py``): output power over the ensemble's.

Where the mocks' posterior is the prior's (bin 1 above ℓ ≈ 500: the shear noise is far above
the signal), the mocks' sample power over the ensemble's equals the no-data chain's.

    python benchmarks/bench_split_gibbs_power.py --results results --truths
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from _config import load_config
from bench_split_gibbs_nongaussian import no_data, plan_of

from kappadiff.diffusion.checkpoint import load_prior
from kappadiff.diffusion.gaussian import draw_gaussian, mode_covariance
from kappadiff.diffusion.process import x0_eps_from_v
from kappadiff.diffusion.split_gibbs import (
    _ring_index,
    covariance_levels,
    estimate_denoiser_covariance,
    noise_level,
    prior_step,
    prior_step_timesteps,
    split_gibbs_sample,
)
from kappadiff.products import read_images
from kappadiff.stages.baselines import read_cutouts
from kappadiff.stages.posterior import read_denoiser_covariance

BANDS = ((1, 3), (3, 6), (6, 12), (12, 24), (24, 46))


def band_power(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean power ``[bin, band]`` of maps ``[N, bin, n, n]`` in the ring bands ``BANDS``."""
    x = torch.as_tensor(np.asarray(x, np.float64))
    ring = _ring_index(x.shape[-1])
    p = (torch.fft.fft2(x).abs() ** 2).mean(0).numpy()
    return np.array(
        [[p[b][(ring >= lo) & (ring < hi)].mean() for lo, hi in BANDS] for b in range(p.shape[0])]
    )


def probability_flow(model, schedule, z: torch.Tensor, steps) -> torch.Tensor:
    """DDIM with η = 0 in the noise level ρ: ``u_s = x̂_0 + (ρ_s/ρ_t)(u_t − x̂_0)``, then ``x̂_0``."""
    rho = noise_level(schedule)
    abar = schedule.alphas_cumprod.double().cpu().numpy()
    u = z.float()
    for i, t in enumerate(steps):
        x_t = math.sqrt(abar[t]) * u
        tt = torch.full((u.shape[0],), t, dtype=torch.long)
        with torch.no_grad():
            x0_hat, _ = x0_eps_from_v(schedule, x_t, tt, model(x_t, tt).float())
        if i + 1 == len(steps):
            return x0_hat
        u = x0_hat + float(rho[steps[i + 1]] / rho[t]) * (u - x0_hat)
    raise ValueError("probability flow: no timesteps")


def reverse_diffusion(model, schedule, covariance, method: str, z, steps, gen) -> torch.Tensor:
    """``z``'s reverse diffusion over ``steps``: the probability-flow ODE or Gaussian-Γ steps."""
    if method == "probability-flow ODE":
        return probability_flow(model, schedule, z, steps)
    return prior_step(model, schedule, covariance, z, steps, gen)


def second_moments(model, schedule, x0: torch.Tensor, seed: int) -> None:
    """Print Γ/P, (Var x̂_0 + Γ)/P and Cov(x_0 − x̂_0, u)/P per band at six noise levels."""
    rho = noise_level(schedule)
    abar = schedule.alphas_cumprod.double().cpu().numpy()
    gen = torch.Generator().manual_seed(seed)
    p0 = band_power(x0)

    def cross(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        fa, fb = torch.fft.fft2(a.double()), torch.fft.fft2(b.double())
        ring = _ring_index(a.shape[-1])
        c = (fa * fb.conj()).real.mean(0).numpy()
        return np.array([[c[i][(ring >= lo) & (ring < hi)].mean() for lo, hi in BANDS]
                         for i in range(c.shape[0])])  # fmt: skip

    for target in (0.1, 0.3, 0.6, 1.0, 1.7, 3.0):
        t = int(np.argmin(np.abs(np.log(rho / target))))
        u = x0 + float(rho[t]) * torch.randn(x0.shape, generator=gen)
        x_t = math.sqrt(abar[t]) * u
        tt = torch.full((u.shape[0],), t, dtype=torch.long)
        with torch.no_grad():
            x0_hat = torch.cat([x0_eps_from_v(schedule, x_t[i : i + 32], tt[i : i + 32],
                                              model(x_t[i : i + 32], tt[i : i + 32]).float())[0]
                                for i in range(0, len(u), 32)])  # fmt: skip
        err = x0 - x0_hat
        gamma = band_power(err)
        for name, value in (
            ("Γ/P", gamma / p0),
            ("(Var x̂0 + Γ)/P", (band_power(x0_hat) + gamma) / p0),
            ("Cov(x0 − x̂0, u)/P", cross(err, u) / p0),
        ):
            row(f"ρ {rho[t]:.2f}: {name}", value)


def row(name: str, ratio: np.ndarray, seconds: float | None = None) -> None:
    cells = " | ".join(" ".join(f"{v:.2f}" for v in ratio[b]) for b in range(ratio.shape[0]))
    print(f"| {name} | {cells} |" + (f" {seconds:.0f} |" if seconds is not None else " |"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--model", default=None, help="default: RESULTS/prior/model.pt")
    ap.add_argument(
        "--covariance",
        default=None,
        help="Γ file (default RESULTS/prior/denoiser_covariance.fits), or 'measure' to "
        "measure it on --n-ref cut-outs",
    )
    ap.add_argument("--n-maps", type=int, default=32, help="x_0 maps / chains per row")
    ap.add_argument("--n-ref", type=int, default=256, help="ensemble cut-outs")
    ap.add_argument("--rho", type=float, default=1.7, help="start of the reverse diffusions")
    ap.add_argument("--final-steps", type=int, default=100)
    ap.add_argument(
        "--noise-steps", type=int, default=200, help="timesteps asked of the unconditional draws"
    )
    ap.add_argument("--truths", action="store_true", help="also from the mock truths")
    ap.add_argument("--schedules", default="20x4@0.3+100:1.7,20x4@0.6+100:1.7")
    ap.add_argument(
        "--samples", default=None, help="bench_split_gibbs_mocks.py's --out: its samples' row"
    )
    ap.add_argument(
        "--parts", default="diffusions,chains", help="also: moments, unconditional, gaussian"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    res = Path(args.results)
    prior = load_prior(args.model or res / "prior" / "model.pt")
    prior.model.eval()
    schedule = prior.schedule
    files = sorted((res / "training").glob("*_cutouts.npy"))
    cut = read_cutouts(files, args.n_ref + args.n_maps)
    ref = prior.from_kappa(torch.from_numpy(cut[::2][: args.n_ref].astype(np.float32)))
    x0_cut = prior.from_kappa(torch.from_numpy(cut[1::2][: args.n_maps].astype(np.float32)))
    npix = ref.shape[-1]
    if args.covariance == "measure":
        t0 = time.perf_counter()
        covariance = estimate_denoiser_covariance(
            prior.model,
            schedule,
            ref,
            covariance_levels(schedule),
            torch.Generator().manual_seed(1),
        )
        print(
            f"denoiser covariance measured on {len(ref)} cut-outs: {time.perf_counter() - t0:.0f} s"
        )
    else:
        path = args.covariance or res / "prior" / "denoiser_covariance.fits"
        covariance = read_denoiser_covariance(path, npix)
    ell_f = 360 * 60 / (npix * float(config["layout"]["pixel_scale_arcmin"]))
    p_ref = band_power(ref)
    bands = ", ".join(f"ℓ {lo * ell_f:.0f}–{hi * ell_f:.0f}" for lo, hi in BANDS)
    print(f"\nbands (|k| {', '.join(f'{lo}–{hi - 1}' for lo, hi in BANDS)}): {bands}")
    print("| row | bin 1 | bin 2 | bin 3 | bin 4 | s |\n|---|---|---|---|---|---|")

    parts = set(args.parts.split(","))
    starts = [("cut-outs", x0_cut)]
    if "gaussian" in parts:
        rng = np.random.default_rng(args.seed)
        gauss = draw_gaussian(mode_covariance(ref.numpy()), args.n_maps, rng)
        starts.append(("Gaussian draws", torch.from_numpy(gauss.astype(np.float32))))
        row(f"{args.n_maps} Gaussian draws / ensemble", band_power(gauss) / p_ref)
    if args.truths:
        patches = [int(p) for p in config["validation"]["patches"][: args.n_maps]]
        truths = np.array(
            [read_images(res / "mocks" / "truth" / f"patch_{p:04d}.fits", ["KAPPA"])[0]["KAPPA"]
             for p in patches]
        )  # fmt: skip
        x0_truth = prior.from_kappa(torch.from_numpy(truths.astype(np.float32)))
        rng = np.random.default_rng(args.seed)
        means = (
            np.array(
                [
                    band_power(ref[rng.choice(len(ref), len(truths), replace=False)])
                    for _ in range(200)
                ]
            )
            / p_ref
        )
        row(f"{len(truths)} mock truths / ensemble", band_power(x0_truth) / p_ref)
        row(f"mean of {len(truths)} cut-outs / ensemble, 5 %", np.percentile(means, 5, axis=0))
        row(f"mean of {len(truths)} cut-outs / ensemble, 95 %", np.percentile(means, 95, axis=0))
        starts.append(("mock truths", x0_truth))
    if args.samples:
        saved = np.load(args.samples)
        xs = prior.from_kappa(torch.from_numpy(saved["samples"]))  # [sample, patch, bin, n, n]
        row(
            f"mock posterior samples ({args.samples}) / ensemble",
            band_power(xs.flatten(0, 1)) / p_ref,
        )

    rho = noise_level(schedule)
    if "moments" in parts:
        second_moments(prior.model, schedule, ref[:128], args.seed)
    t_start = int(np.argmin(np.abs(np.log(rho / args.rho))))
    steps = prior_step_timesteps(schedule, t_start, args.final_steps, 0.01 / rho[t_start])
    for name, x0 in starts if "diffusions" in parts else []:
        for method in ("Gaussian-Γ steps", "probability-flow ODE"):
            gen = torch.Generator().manual_seed(args.seed)
            z = x0 + float(rho[t_start]) * torch.randn(x0.shape, generator=gen)
            t0 = time.perf_counter()
            out = reverse_diffusion(prior.model, schedule, covariance, method, z, steps, gen)
            row(
                f"one reverse diffusion, {method}, ρ {rho[t_start]:.2f}, {len(steps)} calls, "
                f"from {name} / theirs",
                band_power(out) / band_power(x0),
                time.perf_counter() - t0,
            )
    if "unconditional" in parts:
        top = len(rho) - 1
        noise_steps = prior_step_timesteps(schedule, top, args.noise_steps, 0.01 / rho[top])
        gen = torch.Generator().manual_seed(args.seed)
        z = float(rho[top]) * torch.randn((args.n_maps, *ref.shape[1:]), generator=gen)
        for method in ("Gaussian-Γ steps", "probability-flow ODE"):
            t0 = time.perf_counter()
            out = reverse_diffusion(prior.model, schedule, covariance, method, z, noise_steps, gen)
            row(
                f"unconditional, {method}, ρ {rho[top]:.0f}, {len(noise_steps)} calls / ensemble",
                band_power(out) / p_ref,
                time.perf_counter() - t0,
            )
    for spec in args.schedules.split(",") if "chains" in parts else []:
        plan = plan_of(spec, schedule)
        t0 = time.perf_counter()
        x = split_gibbs_sample(
            prior.model, schedule, covariance, no_data(tuple(ref.shape[1:])),
            (args.n_maps, *ref.shape[1:]), plan, torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
        row(f"no-data chain {spec}, {plan.nfe} NFE / ensemble", band_power(x) / p_ref,
            time.perf_counter() - t0)  # fmt: skip


if __name__ == "__main__":
    main()
