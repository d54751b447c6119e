"""Posterior samplers against the exact posterior of a Gaussian prior, on the mock patches.

With a Gaussian prior (the training cut-outs' per-mode joint covariance in the prior's
normalised variable, :class:`kappadiff.diffusion.gaussian.GaussianDenoiser` as the network)
the posterior of a shear patch is Gaussian and known exactly
(:class:`kappadiff.diffusion.gaussian.GaussianPosterior`: mean and exact draws by
perturb-and-solve). Each sampler is run with that denoiser on the first ``--n-patches``
validation mock patches (their shear, noise and mask) at every ``--nfe``:

* DPS unscaled and DPS with A(t) (t̄ = ``--t-bar``, σ_t = ``--sigma-t``), the config's
  ``sampling`` steps rule, step form, ζ and shear padding, η = 0;
* annealed split Gibbs (:mod:`kappadiff.diffusion.split_gibbs`) with the config's
  ``sampling.split_gibbs`` settings (the sweeps: ``--sweeps``, default the config's), the
  patch's deflated floor, and the denoiser covariance measured on ``--n-cov-maps`` Gaussian
  draws (as the pipeline measures the network's on training cut-outs).

Per method it prints, per bin over all pixels of the patches:

* ρ_c: the correlation of the sample mean ``m̂`` with the exact mean ``m`` corrected for the
  finite number ``n`` of samples, ``C(m̂, m)/√(C(m, m) [C(m̂, m̂) − S²/n])`` with ``S²`` the
  mean per-pixel sample variance (the sampling noise of ``m̂`` adds ``S²/n`` to its variance
  and nothing to its covariance with ``m``);
* the per-pixel ratio of the sample standard deviation to the exact one (from
  ``--n-exact`` exact draws): median and 5–95 % range; the line ``exact draws`` is the same
  statistic for ``n`` further exact draws, the spread a perfect sampler shows;
* TARP max |ECP − α| with ``--n-truths`` exact draws per patch as the truths, all bins
  jointly, prior references (the pipeline's TARP: ``validation`` settings).

    python benchmarks/bench_exact_gaussian.py --config config/config.yaml --results results
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
from kappadiff.diffusion.gaussian import (
    GaussianDenoiser,
    GaussianPosterior,
    draw_gaussian,
    mode_covariance,
)
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.diffusion.split_gibbs import (
    estimate_denoiser_covariance,
    noise_level,
    patch_sampler,
    split_gibbs_sample,
)
from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages.baselines import read_cutouts
from kappadiff.stages.scaling_search import run_coverage
from kappadiff.tarp import tarp_inputs


def corrected_rho(samples: np.ndarray, exact_mean: np.ndarray) -> np.ndarray:
    """ρ_c per bin of the samples' mean with ``exact_mean``: ``[S, P, bin, n, n]`` → ``[bin]``."""
    n = samples.shape[0]
    m_hat = samples.mean(axis=0)
    s2 = samples.var(axis=0, ddof=1).mean(axis=(0, 2, 3))
    a = np.moveaxis(m_hat, 1, 0).reshape(m_hat.shape[1], -1)
    b = np.moveaxis(exact_mean, 1, 0).reshape(exact_mean.shape[1], -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    c_ab, c_aa, c_bb = (a * b).mean(1), (a * a).mean(1), (b * b).mean(1)
    return c_ab / np.sqrt(c_bb * (c_aa - s2 / n))


def std_ratio(samples: np.ndarray, exact_std: np.ndarray) -> tuple[float, float, float]:
    """Median, 5 % and 95 % of the per-pixel ratio of the samples' std to the exact std."""
    r = (samples.std(axis=0, ddof=1) / exact_std).ravel()
    return float(np.median(r)), float(np.percentile(r, 5)), float(np.percentile(r, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--n-patches", type=int, default=4)
    ap.add_argument("--n-samples", type=int, default=128, help="per patch and method")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nfe", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--methods", nargs="+", default=["dps", "dps_scaled", "split_gibbs"])
    ap.add_argument("--t-bar", type=float, default=950.0)
    ap.add_argument("--sigma-t", type=float, default=20.0)
    ap.add_argument("--n-exact", type=int, default=512, help="exact draws per patch (std)")
    ap.add_argument("--n-truths", type=int, default=16, help="exact draws per patch (TARP)")
    ap.add_argument("--n-cov-maps", type=int, default=256)
    ap.add_argument("--n-cutouts", type=int, default=1000, help="cut-outs for the covariance")
    ap.add_argument("--rho-start", type=float, default=None, help="split Gibbs (config's)")
    ap.add_argument("--sweeps", type=int, nargs="+", default=None, help="split Gibbs (config's)")
    ap.add_argument("--prior-last-ratio", type=float, default=None, help="split Gibbs (config's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    res = Path(args.results)
    s, v = config["sampling"], config["validation"]
    patches = [int(p) for p in v["patches"][: args.n_patches]]
    sg = s["split_gibbs"]
    rho_start = args.rho_start
    args.sweeps = args.sweeps or [int(sg["sweeps"])]

    prior = load_prior(res / "prior" / "model.pt")
    schedule = prior.schedule
    maps = read_cutouts(sorted((res / "training").glob("*_cutouts.npy")), args.n_cutouts)
    x = prior.from_kappa(torch.from_numpy(maps.astype(np.float32))).double().numpy()
    cov = mode_covariance(x)
    denoiser = GaussianDenoiser(cov, schedule)
    if prior.normalisation.kind != "affine":
        raise SystemExit("the exact Gaussian posterior needs the affine normalisation")
    scale, offset = prior.normalisation.std, prior.normalisation.mean
    pad = int(s["shear_pad"])

    t0 = time.perf_counter()
    problems = []
    for p in patches:
        d, _ = read_data_patch(res / "mocks" / "data" / f"patch_{p:04d}.fits")
        sd = shear_data(d["G1"], d["G2"], d["SIGMA"], d["MASK"], source=f"patch {p}")
        post = GaussianPosterior(cov, sd, scale, offset, pad=pad)
        gen = torch.Generator().manual_seed(1000 + p)
        exact = torch.cat([post.draws(64, gen) for _ in range(args.n_exact // 64)]).numpy()
        spare = torch.cat([post.draws(64, gen) for _ in range(args.n_samples // 64)]).numpy()
        truths = post.draws(args.n_truths, gen).numpy()
        problems.append((p, sd, post.mean().numpy(), exact.std(axis=0, ddof=1), spare, truths))
    print(f"exact posteriors of {len(patches)} patches: {time.perf_counter() - t0:.0f} s")
    rho_grid = noise_level(schedule)
    targets = np.geomspace(0.005, 30.0, 40)
    levels = [int(np.argmin(np.abs(np.log(rho_grid / r)))) for r in targets]
    t0 = time.perf_counter()
    gmaps = torch.from_numpy(draw_gaussian(cov, args.n_cov_maps, np.random.default_rng(7)))
    covariance = estimate_denoiser_covariance(
        denoiser, schedule, gmaps.float(), levels, torch.Generator().manual_seed(8)
    )
    print(f"denoiser covariance, {len(covariance.rho)} levels: {time.perf_counter() - t0:.0f} s")
    ref_maps = draw_gaussian(cov, int(v["n_prior_draws"]), np.random.default_rng(9))

    def settings(sweeps: int) -> dict[str, float | int]:
        """The config's split-Gibbs settings with ``sweeps`` sweeps."""
        keys = ("rho_start", "floor_fraction", "prior_steps", "final_steps", "final_rho")
        last = sg["prior_last_ratio"] if args.prior_last_ratio is None else args.prior_last_ratio
        out = {k: sg[k] for k in keys} | {"sweeps": sweeps, "last_ratio": last}
        return out | ({"rho_start": rho_start} if args.rho_start is not None else {})

    nfe_of: dict[str, int] = {}

    def draw(method: str, nfe: int, sd, gen: torch.Generator, n: int) -> np.ndarray:
        shape = (n, *sd.g1.shape)
        if method == "split_gibbs":  # nfe: the sweeps
            plan, step = patch_sampler(sd, scale, offset, schedule, pad=pad, **settings(nfe))
            nfe_of[f"split_gibbs, {nfe} sweeps"] = plan.nfe
            xs = split_gibbs_sample(denoiser, schedule, covariance, step, shape, plan, gen)
        else:
            steps = timestep_sequence(schedule.T, nfe, float(s["step_power"]))
            scaling = (
                LikelihoodScaling((args.t_bar,), (args.sigma_t,))
                if method == "dps_scaled"
                else LikelihoodScaling()
            )
            guidance = dps_guidance(
                sd, prior.to_kappa, schedule.alphas_cumprod, steps, scaling=scaling,
                step=s["step"], zeta=float(s["zeta"]), pad=pad,
            )  # fmt: skip
            xs = ddim_sample(denoiser, schedule, shape, steps, 0.0, gen, guidance=guidance)
        return xs.double().numpy()

    rows = []
    for method in args.methods:
        for nfe in args.sweeps if method == "split_gibbs" else args.nfe:
            t0 = time.perf_counter()
            samples = []
            for p, sd, *_ in problems:
                gen = torch.Generator().manual_seed(p)
                batches = [
                    draw(method, nfe, sd, gen, min(args.batch, args.n_samples - f))
                    for f in range(0, args.n_samples, args.batch)
                ]
                samples.append(np.concatenate(batches))
            wall = time.perf_counter() - t0
            label = f"split_gibbs, {nfe} sweeps" if method == "split_gibbs" else method
            nfe = nfe_of.get(label, nfe)
            rows.append((label, str(nfe), np.stack(samples, axis=1), wall))
            print(f"{label} at {nfe} NFE: {wall:.0f} s", flush=True)
    rows.append(("exact draws", "–", np.stack([pr[4] for pr in problems], axis=1), 0.0))

    exact_mean = np.stack([pr[2] for pr in problems])
    exact_std = np.stack([pr[3] for pr in problems])
    truths = np.concatenate([pr[5] for pr in problems])  # [patch × truth, bin, n, n]
    owner = np.repeat(np.arange(len(patches)), args.n_truths)
    n_total = args.n_samples * len(patches)
    print(
        f"\nGaussian prior, {len(patches)} mock patches {patches}, {args.n_samples} samples "
        f"per patch and method, {args.n_exact} exact draws per patch (std), "
        f"{args.n_truths} per patch (TARP truths)"
    )
    head = "| method | NFE | ρ_c per bin | std ratio median (5–95 %) | TARP max |ECP−α| |"
    print(head + " s/sample |")
    print("|---|---|---|---|---|---|")
    for label, nfe, samples, wall in rows:
        rho_c = corrected_rho(samples, exact_mean)
        med, lo, hi = std_ratio(samples, exact_std)
        xt, theta, pool = tarp_inputs(
            samples[:, owner].astype(np.float32), truths, ref_maps, int(v["n_regions"]),
            int(v["block"]),
        )  # fmt: skip
        tarp = run_coverage(xt, theta, pool, config)[("prior", 0)].max_error
        per = f"{wall / n_total:.2f}" if wall else "–"
        rho_txt = " / ".join(f"{r:.3f}" for r in rho_c)
        std_txt = f"{med:.3f} ({lo:.2f}–{hi:.2f})"
        print(f"| {label} | {nfe} | {rho_txt} | {std_txt} | {tarp:.3f} | {per} |")


if __name__ == "__main__":
    main()
