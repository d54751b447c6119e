"""Checks of the posterior products against mock truth (issue "Done when" figures).

For each mock patch it prints, per tomographic bin:
- ρ_c(ℓ) = C_rt/√(C_rr C_tt) of the posterior mean, the Kaiser-Squires map and the Wiener
  map against the true κ, in broad ℓ bands, and the mean over the high-ℓ bands (ℓ above
  --ell-high, by default the geometric middle of the patch's ℓ range);
- χ²/dof of the posterior samples on the unmasked pixels (1 ± 0.1 expected);
- the trajectory drift rms(x_t)/expected of scaled DPS (the product) and of unscaled DPS
  (A ≡ 1; drawn here into --unscaled-dir with the same seeds, unless already there):
  the largest |drift − 1| along the reverse process.

    python benchmarks/check_posterior.py --config config/config.yaml --patches 0 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

from kappadiff.products import read_images
from kappadiff.stages.posterior import sample_patch
from kappadiff.stats import correlation_coefficient


def drift_summary(path: Path) -> np.ndarray:
    """Largest |drift − 1| over the reverse process, per bin."""
    with fits.open(path) as hdul:
        return np.abs(hdul["DRIFT"].data - 1.0).max(axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--patches", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--ell-high", type=float, default=None, help="default: the upper half of the ℓ range"
    )
    ap.add_argument("--unscaled-dir", default=None, help="default: <results>/validation/unscaled")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(args.config) as f:
        config = yaml.safe_load(f)
    results = Path(config.get("results", "results"))
    unscaled_dir = Path(args.unscaled_dir or results / "validation" / "unscaled")
    pixel = config["layout"]["pixel_scale_arcmin"]
    npix = config["layout"]["npix"]
    ell_f = 2 * np.pi / (npix * pixel * np.pi / 180 / 60)
    ell_nyq = np.pi / (pixel * np.pi / 180 / 60)
    edges = np.geomspace(ell_f, ell_nyq, 7)
    ell_high = args.ell_high if args.ell_high is not None else np.sqrt(ell_f * ell_nyq)
    print(f"config {args.config}; ℓ band edges {np.round(edges).astype(int).tolist()}")

    for pid in args.patches:
        name = f"patch_{pid:04d}.fits"
        truth = read_images(results / "truth" / name, ["KAPPA"])[0]["KAPPA"].astype(np.float64)
        post, header = read_images(results / "posterior" / name, ["MEAN", "CHI2"])
        maps = {
            "posterior": post["MEAN"],
            "KS": read_images(results / "baselines" / "ks" / name, ["KAPPA"])[0]["KAPPA"],
            "Wiener": read_images(results / "baselines" / "wiener" / name, ["KAPPA"])[0]["KAPPA"],
        }
        print(f"\npatch {pid}: NFE {header['NFE']}, {header['NSAMPLE']} samples")
        high = {}
        for label, m in maps.items():
            ell, rho = correlation_coefficient(m.astype(np.float64), truth, pixel, edges)
            high[label] = rho[:, ell > ell_high].mean(axis=1)
            rows = "  ".join(f"{r:.2f}" for r in rho.mean(axis=0))
            print(f"  rho_c {label:9s} (mean of bins) per band: {rows}")
        for b in range(truth.shape[0]):
            print(
                f"  bin {b + 1}: rho_c(ℓ>{ell_high:.0f}) posterior {high['posterior'][b]:.3f}"
                f"  KS {high['KS'][b]:.3f}  Wiener {high['Wiener'][b]:.3f};"
                f"  chi2/dof {header[f'CHI2DOF{b + 1}']:.3f}"
                f" (samples {post['CHI2'][:, b].min():.3f}-{post['CHI2'][:, b].max():.3f})"
            )
        better = (high["posterior"] > high["KS"]) & (high["posterior"] > high["Wiener"])
        print(
            f"  posterior beats KS and Wiener at high ℓ in {int(better.sum())}/{better.size} bins"
        )

        unscaled = unscaled_dir / name
        if not unscaled.exists():
            run_config = {
                "seed": config["seed"],
                "sampling": {**config["sampling"], "scaled": False},
            }
            sample_patch(
                results / "data" / name,
                results / "prior" / "model.pt",
                unscaled,
                _with_defaults(run_config),
                pid,
                threads=args.threads,
            )
        d_scaled = drift_summary(results / "posterior" / name)
        d_plain = drift_summary(unscaled)
        print(f"  max |drift - 1| per bin: scaled {np.round(d_scaled.astype(float), 3).tolist()}")
        print(f"                         unscaled {np.round(d_plain.astype(float), 3).tolist()}")
        with fits.open(unscaled) as hdul:
            plain = [hdul[0].header[f"CHI2DOF{b + 1}"] for b in range(truth.shape[0])]
        print(f"  unscaled chi2/dof per bin {np.round(np.asarray(plain, dtype=float), 3).tolist()}")


def _with_defaults(config: dict) -> dict:
    """Fill sampling defaults from the schema (the config files may omit keys)."""
    schema_path = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    props = schema["properties"]["sampling"]["properties"]
    sampling = {k: v["default"] for k, v in props.items()}
    sampling.update(config["sampling"])
    return {**config, "sampling": sampling}


if __name__ == "__main__":
    main()
