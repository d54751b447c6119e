"""Wall time per posterior sample of one patch, DPS or split Gibbs, as ``sample_patch`` runs it.

Runs :func:`kappadiff.stages.posterior.sample_patch` on one mock data patch of a results
folder with the configuration's ``sampling`` section and ``--method``, and prints the
seconds per sample and the NFE. DPS uses A(t) ``--t-bar``/``--sigma-t`` (the default run's
tuned scaling; no scaling file needed); split Gibbs needs the prior's denoiser covariance
(``prior/denoiser_covariance.fits``, the ``denoiser_covariance`` rule's product, or
``--covariance``). Time the two back to back on the same idle machine:

    python benchmarks/bench_sampler_speed.py --method dps --results results
    python benchmarks/bench_sampler_speed.py --method split_gibbs --results results
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _config import load_config
from astropy.io import fits

from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages.posterior import sample_patch, sampling_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--method", choices=["dps", "split_gibbs"], required=True)
    ap.add_argument("--patch", type=int, default=None, help="mock patch (first validation one)")
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--t-bar", type=float, default=950.0)
    ap.add_argument("--sigma-t", type=float, default=20.0)
    ap.add_argument("--covariance", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    config = load_config(args.config)
    res = Path(args.results)
    patch = args.patch if args.patch is not None else int(config["validation"]["patches"][0])
    config["sampling"].update(
        method=args.method, n_samples=args.n_samples, checkpoint_batches=False
    )
    params = sampling_params(config)
    covariance = args.covariance or res / "prior" / "denoiser_covariance.fits"
    kwargs = (
        {"covariance_path": covariance}
        if args.method == "split_gibbs"
        else {"scaling": LikelihoodScaling((args.t_bar,), (args.sigma_t,))}
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = sample_patch(
            res / "mocks" / "data" / f"patch_{patch:04d}.fits",
            res / "prior" / "model.pt",
            Path(tmp) / f"patch_{patch:04d}.fits",
            params,
            patch,
            threads=args.threads,
            **kwargs,
        )
        wall = time.perf_counter() - t0
        nfe = fits.getheader(out, 0)["NFE"]
    print(
        f"{args.method}: patch {patch}, {args.n_samples} samples, NFE {nfe}: {wall:.1f} s, "
        f"{wall / args.n_samples:.2f} s per sample"
    )


if __name__ == "__main__":
    main()
