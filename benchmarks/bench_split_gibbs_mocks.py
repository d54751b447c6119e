"""Split-Gibbs posteriors with the trained prior on the validation mock patches, untuned.

Runs annealed split Gibbs (:mod:`kappadiff.diffusion.split_gibbs`: exact data step, a
prior step of ``prior_steps`` network calls whose jumps carry the network's measured
denoiser covariance; the config's ``sampling.split_gibbs`` unless overridden) on every
``validation.patches`` mock patch of a results folder that holds the prior
(``prior/model.pt``), the training cut-outs, the mock data, truths and tomographic Wiener
filters (``mocks/``) and the TARP references (``validation/tarp_references.fits``), and
prints:

* TARP max |ECP − α| (all bins jointly and each bin, prior references, the validation
  settings of the pipeline's search);
* the samples' C_ℓ over the truths' per bin and ℓ bin (observed pixels);
* ρ_c(ℓ) of the posterior mean with the truth, corrected for the finite number of samples
  (:func:`kappadiff.stats.accuracy.corrected_mean_rho`), beside the tomographic Wiener
  filter's (the exact posterior mean of a Gaussian prior, no sampling noise), and the
  smallest difference;
* wall time per posterior sample, and that of DPS with the config's A(t) at the config's
  ``validation.n_steps`` on ``--dps-patches`` of the same patches (same batch, threads).

    python benchmarks/bench_split_gibbs_mocks.py --config config/config.yaml --results results

Samples are kept in ``--out`` (npz) so that the statistics can be recomputed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _config import load_config

from kappadiff.catalogue.io import read_data_patch
from kappadiff.diffusion.checkpoint import load_prior
from kappadiff.diffusion.dps import dps_guidance, shear_data
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.diffusion.split_gibbs import (
    estimate_denoiser_covariance,
    noise_level,
    patch_sampler,
    split_gibbs_sample,
)
from kappadiff.products import read_images
from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages.baselines import read_cutouts
from kappadiff.stages.scaling_search import run_coverage
from kappadiff.stats import log_ell_bins
from kappadiff.stats.accuracy import corrected_mean_rho, power_ratio
from kappadiff.stats.spectra import correlation_coefficient
from kappadiff.tarp import tarp_inputs

# the config's sampling.split_gibbs settings a run may override (--sweeps, --final-steps, ...)
SETTINGS = {
    "sweeps": int,
    "rho_start": float,
    "floor_fraction": float,
    "prior_steps": int,
    "prior_last_ratio": float,
    "final_steps": int,
    "final_rho": float,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--model", default=None, help="the prior (default: RESULTS/prior/model.pt)")
    # split-Gibbs settings: the config's (sampling.split_gibbs) unless given
    for key, kind in SETTINGS.items():
        ap.add_argument("--" + key.replace("_", "-"), type=kind, default=None)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--n-patches", type=int, default=None, help="the first of the patches")
    ap.add_argument("--n-cov-maps", type=int, default=256)
    ap.add_argument("--dps-patches", type=int, default=2)
    ap.add_argument("--t-bar", type=float, default=950.0, help="DPS timing run's A(t)")
    ap.add_argument("--sigma-t", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="split_gibbs_mocks.npz")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    res = Path(args.results)
    s, v = config["sampling"], config["validation"]
    sg = s["split_gibbs"]
    settings = {k: sg[k] if getattr(args, k) is None else getattr(args, k) for k in SETTINGS}
    settings["last_ratio"] = settings.pop("prior_last_ratio")
    patches = [int(p) for p in v["patches"][: args.n_patches]]
    scale_arcmin = float(config["layout"]["pixel_scale_arcmin"])
    pad = int(s["shear_pad"])

    prior = load_prior(args.model or res / "prior" / "model.pt")
    prior.model.eval()
    if prior.normalisation.kind != "affine":
        raise SystemExit("the exact data step needs the affine normalisation")
    scale, offset = prior.normalisation.std, prior.normalisation.mean
    schedule = prior.schedule

    t0 = time.perf_counter()
    cut = read_cutouts(sorted((res / "training").glob("*_cutouts.npy")), args.n_cov_maps)
    maps = prior.from_kappa(torch.from_numpy(cut.astype(np.float32)))
    rho_grid = noise_level(schedule)
    levels = [int(np.argmin(np.abs(np.log(rho_grid / r)))) for r in np.geomspace(0.005, 30, 40)]
    covariance = estimate_denoiser_covariance(
        prior.model, schedule, maps, levels, torch.Generator().manual_seed(1)
    )
    print(f"denoiser covariance: {len(covariance.rho)} levels x {len(maps)} cut-outs, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    samples, truth, wiener, mask, data = [], [], [], [], []
    t_split, cg = 0.0, []
    for p in patches:
        d, _ = read_data_patch(res / "mocks" / "data" / f"patch_{p:04d}.fits")
        sd = shear_data(d["G1"], d["G2"], d["SIGMA"], d["MASK"], source=f"patch {p}")
        data.append(sd)
        mask.append(d["MASK"])
        for name, dest in (("truth", truth), ("baselines/wiener_tomo", wiener)):
            path = res / "mocks" / name / f"patch_{p:04d}.fits"
            dest.append(read_images(path, ["KAPPA"])[0]["KAPPA"])
        plan, step = patch_sampler(sd, scale, offset, schedule, pad=pad, **settings)
        gen = torch.Generator().manual_seed(p)
        t0 = time.perf_counter()
        xs = split_gibbs_sample(
            prior.model, schedule, covariance, step, (args.n_samples, *sd.g1.shape), plan, gen
        )
        t_split += time.perf_counter() - t0
        cg += step.iterations
        samples.append(prior.to_kappa(xs.float()).double().numpy())
        print(f"patch {p}: {time.perf_counter() - t0:.1f} s, NFE {plan.nfe}, floor rho "
              f"{step.deflation:.2f}, CG {np.mean(step.iterations):.1f} iterations a data step",
              flush=True)  # fmt: skip
    samples = np.stack(samples, axis=1)  # [sample, patch, bin, n, n]
    truth, wiener, mask = np.asarray(truth), np.asarray(wiener), np.asarray(mask)
    np.savez(args.out, samples=samples.astype(np.float32), patches=np.asarray(patches))
    per_sample = t_split / (len(patches) * args.n_samples)

    t0 = time.perf_counter()
    steps = timestep_sequence(schedule.T, int(v["n_steps"]), float(s["step_power"]))
    scaling = LikelihoodScaling((args.t_bar,), (args.sigma_t,))
    for sd, p in zip(data[: args.dps_patches], patches, strict=False):
        guidance = dps_guidance(
            sd, prior.to_kappa, schedule.alphas_cumprod, steps, scaling=scaling,
            step=s["step"], zeta=float(s["zeta"]), pad=pad,
        )  # fmt: skip
        shape = (args.n_samples, *sd.g1.shape)
        ddim_sample(prior.model, schedule, shape, steps, 0.0, torch.Generator().manual_seed(p),
                    guidance=guidance)  # fmt: skip
    dps_per_sample = (time.perf_counter() - t0) / (args.dps_patches * args.n_samples)

    ref = read_images(res / "validation" / "tarp_references.fits", ["KAPPA"])[0]["KAPPA"]
    x, theta, pool = tarp_inputs(samples, truth, ref.astype(np.float64), int(v["n_regions"]),
                                 int(v["block"]))  # fmt: skip
    cov = run_coverage(x, theta, pool, config)
    n_bins = truth.shape[1]
    edges = log_ell_bins(truth.shape[-1], scale_arcmin, int(v["n_ell_bins"]))
    ell, ratio = power_ratio(samples, truth, mask, scale_arcmin, edges)
    rho_sg = corrected_mean_rho(samples, truth, mask, scale_arcmin, edges)
    _, rho_wf = correlation_coefficient(wiener * mask, truth * mask, scale_arcmin, edges, 0)

    print(f"\n{len(patches)} mock patches, {args.n_samples} samples, split Gibbs "
          + ", ".join(f"{k} {v}" for k, v in settings.items()))  # fmt: skip
    print(f"wall time per sample: split Gibbs {per_sample:.2f} s (CG {np.mean(cg):.1f} "
          f"iterations a data step), DPS {len(steps)} NFE {dps_per_sample:.2f} s, "
          f"ratio {per_sample / dps_per_sample:.2f}")  # fmt: skip
    joint = cov[("prior", 0)].max_error
    per_bin = [cov[("prior", b)].max_error for b in range(1, n_bins + 1)]
    print(f"TARP max|ECP-a|: joint {joint:.3f}; bins " + " ".join(f"{e:.3f}" for e in per_bin))
    print("l: " + " ".join(f"{e:6.0f}" for e in ell))
    for b in range(n_bins):
        print(f"bin {b + 1} C_l ratio  " + " ".join(f"{r:6.3f}" for r in ratio[b]))
        print(f"bin {b + 1} rho_c SG   " + " ".join(f"{r:6.3f}" for r in rho_sg[b]))
        print(f"bin {b + 1} rho_c WF   " + " ".join(f"{r:6.3f}" for r in rho_wf[b]))
    print(f"max |C_l ratio - 1|: {np.abs(ratio - 1).max():.3f}")
    print(f"min over bins and l of rho_c(SG) - rho_c(WF): {(rho_sg - rho_wf).min():.3f}")


if __name__ == "__main__":
    main()
