"""How close DPS comes to the exact posterior mean, with the exact denoiser of a Gaussian prior.

With a Gaussian prior (the training cut-outs' per-mode joint covariance in the prior's
normalised variable, :class:`kappadiff.diffusion.gaussian.GaussianDenoiser`) the exact
posterior mean of a shear patch is a tomographic Wiener filter, so the loss of DPS, i.e. of
its likelihood approximation, its step rule and its κ → γ operator, can be measured apart
from the network. On the validation mock patches this script compares, per bin:

* the tomographic Wiener filter (the pipeline's ``mocks/baselines/wiener_tomo`` products), the
  Gaussian optimum;
* the per-bin Wiener filter (``mocks/baselines/wiener``), the paper's baseline;
* the mean of ``--n-samples`` DPS samples drawn with the Gaussian denoiser, for each
  ``--shear-pads`` x ``--t-bars`` (0: unscaled DPS), at the config's ``sampling`` steps.

It prints ρ_c(ℓ) with the truth (observed pixels, spectra averaged over patches before the
ratio, as the validation stage does) and ℓ₀.₅ per bin.

    python benchmarks/bench_dps_gaussian.py --config results/config.resolved.yaml \\
        --results results --shear-pads 0 16 --t-bars 0 950

(the resolved configuration of a run holds the schema defaults the sampler needs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from kappadiff.catalogue.io import read_data_patch
from kappadiff.diffusion.checkpoint import load_prior
from kappadiff.diffusion.dps import dps_guidance, shear_data
from kappadiff.diffusion.gaussian import GaussianDenoiser, mode_covariance
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.products import read_images
from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages.baselines import read_cutouts
from kappadiff.stats import compare_statistics, log_ell_bins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="results/config.resolved.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--shear-pads", type=int, nargs="+", default=[0, 16])
    ap.add_argument("--t-bars", type=float, nargs="+", default=[0.0, 950.0])
    ap.add_argument("--sigma-t", type=float, default=20.0)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--n-cutouts", type=int, default=1000, help="cut-outs for the covariance")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        config = yaml.safe_load(f)
    res = Path(args.results)
    scale = float(config["layout"]["pixel_scale_arcmin"])
    npix = int(config["layout"]["npix"])
    s = config["sampling"]
    patches = [int(p) for p in config["validation"]["patches"]]
    cutouts = sorted((res / "training").glob("*_cutouts.npy"))

    prior = load_prior(res / "prior" / "model.pt")
    maps = read_cutouts(cutouts, args.n_cutouts)
    x = prior.from_kappa(torch.from_numpy(maps.astype(np.float32))).double().numpy()
    denoiser = GaussianDenoiser(mode_covariance(x), prior.schedule)

    data, mask = [], []
    methods: dict[str, np.ndarray] = {}
    for p in patches:
        images, _ = read_data_patch(res / "mocks" / "data" / f"patch_{p:04d}.fits", scale)
        data.append(images)
        mask.append(images["MASK"])
    # the truth and the pipeline's two Wiener filters of the same validation mocks
    for name, folder in (("truth", "mocks/truth"), ("wiener", "mocks/baselines/wiener"),
                         ("wiener_tomo", "mocks/baselines/wiener_tomo")):  # fmt: skip
        methods[name] = np.asarray(
            [
                read_images(res / folder / f"patch_{p:04d}.fits", ["KAPPA"])[0]["KAPPA"]
                for p in patches
            ]  # fmt: skip
        )

    steps = timestep_sequence(prior.schedule.T, int(s["n_steps"]), float(s["step_power"]))
    shape = (args.n_samples, *methods["truth"].shape[1:])
    for pad in args.shear_pads:
        for t_bar in args.t_bars:
            t0 = time.perf_counter()
            means = []
            scaling = (
                LikelihoodScaling((t_bar,), (args.sigma_t,)) if t_bar > 0 else LikelihoodScaling()
            )
            for p, d in zip(patches, data, strict=True):
                sd = shear_data(d["G1"], d["G2"], d["SIGMA"], d["MASK"], source=f"patch {p}")
                guidance = dps_guidance(
                    sd, prior.to_kappa, prior.schedule.alphas_cumprod, steps,
                    scaling=scaling, step=s["step"], zeta=float(s["zeta"]), pad=pad,
                )  # fmt: skip
                gen = torch.Generator().manual_seed(p)
                xs = ddim_sample(
                    denoiser, prior.schedule, shape, steps, 0.0, gen, guidance=guidance
                )
                means.append(prior.to_kappa(xs.float()).double().mean(dim=0).numpy())
            label = f"dps_pad{pad}_" + (f"t{t_bar:g}" if t_bar > 0 else "unscaled")
            methods[label] = np.asarray(means)
            print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)

    edges = log_ell_bins(npix, scale, int(config["validation"]["n_ell_bins"]))
    kappa_edges = np.tile(np.linspace(-0.2, 0.4, 11), (shape[1], 1))
    stats = compare_statistics(
        methods, np.asarray(mask), scale, edges, kappa_edges, kappa_edges, n_bootstrap=2
    )
    ell = stats["truth"]["ell"]
    print(f"\nGaussian prior, {len(patches)} mock patches, {args.n_samples} DPS samples, "
          f"{len(steps)} steps (power {s['step_power']})")  # fmt: skip
    print("l_0.5 per bin:")
    for name, r in stats.items():
        if name != "truth":
            print(f"  {name:22s}", "  ".join(f"{v:6.0f}" for v in r["ell_half"]))
    for b in range(shape[1]):
        print(f"rho_c(l), bin {b + 1}; l =", " ".join(f"{v:5.0f}" for v in ell))
        for name, r in stats.items():
            if name != "truth":
                print(f"  {name:22s}", " ".join(f"{v:5.2f}" for v in r["rho"][b]))


if __name__ == "__main__":
    main()
