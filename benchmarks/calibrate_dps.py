"""DPS settings on held-out cut-outs: ρ_c against the truth, χ²/dof, TARP and C_ℓ, per setting.

A quick calibration bench for the likelihood step (A(t), ζ, NFE, precision) with many truths
and samples, so that settings can be compared before a pipeline run. Truths are the prior's
held-out cut-outs (never trained on; indices from the checkpoint). Their shear is the flat-sky
forward operator plus Gaussian noise with the SIGMA and MASK of a data patch
(``results/data/patch_*.fits``), so the likelihood the sampler assumes is the true one and
what differs between settings is the sampler alone. Wiener (with the pipeline's signal power)
and Kaiser-Squires maps of the same shear are the baselines.

Printed per setting and tomographic bin: ρ_c(ℓ) of the posterior mean in log ℓ bins (spectra
averaged over the truths first, as in the validation stage), and the same for Wiener and KS;
the mean χ²/dof of the samples on observed pixels; max |ECP − α| of TARP with prior references
(all bins jointly and per bin); the worst |C_ℓ(samples)/C_ℓ(truth) − 1|; the largest
departure of the trajectory diagnostic (:class:`kappadiff.diffusion.dps.TrajectoryDiagnostic`,
rms of x_t over its expectation on the diffusion's marginals) from 1. With ``--bf16-check``
the first setting is run again under bf16 autocast on the same seeds and the difference of the
posterior means is printed in units of its Monte-Carlo error.

    python benchmarks/calibrate_dps.py --model results/prior/model.pt \\
        --cutouts results/training/sim000_cutouts.npy --holdout \\
        --noise-patch results/data/patch_0000.fits \\
        --signal-power results/baselines/signal_power.fits \\
        --setting unscaled:scaled=0 --setting t500:t_bar=500 --setting t500z4:t_bar=500,zeta=4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from astropy.io import fits

from kappadiff import lensing, stats
from kappadiff.diffusion.checkpoint import load_checkpoint, prior_from_state
from kappadiff.diffusion.dps import TrajectoryDiagnostic, chi2, dps_guidance, shear_data
from kappadiff.diffusion.sampler import ddim_sample, timestep_sequence
from kappadiff.diffusion.speed import prepare_network
from kappadiff.scaling import LikelihoodScaling
from kappadiff.stages.baselines import read_signal_power
from kappadiff.stages.scaling_search import run_coverage
from kappadiff.stats import log_ell_bins
from kappadiff.tarp import tarp_inputs

DEFAULTS = {"scaled": 1.0, "t_bar": 500.0, "sigma_t": 20.0, "zeta": 1.0, "step": "beta"}


def parse_setting(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` → (name, DPS keyword arguments)."""
    name, _, rest = text.partition(":")
    kw = dict(DEFAULTS)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"--setting {text!r}: unknown key {key!r} (known: {list(DEFAULTS)})")
        kw[key] = value if key == "step" else float(value)
    kw["scaled"] = bool(kw["scaled"])
    return name, kw


def mock_shear(truth: np.ndarray, sigma: np.ndarray, mask: np.ndarray, seed: int):
    """Flat-sky shear of ``truth [N, bin, n, n]`` plus noise σ on observed pixels."""
    rng = np.random.default_rng(seed)
    g1, g2 = lensing.kappa_to_shear(truth)
    g1 = np.where(mask > 0, g1 + sigma * rng.normal(size=g1.shape), 0.0)
    g2 = np.where(mask > 0, g2 + sigma * rng.normal(size=g2.shape), 0.0)
    return g1, g2


def posterior(prior, network, g1, g2, sigma, mask, kw, args, device, seed):
    """κ samples ``[sample, bin, n, n]``, χ²/dof ``[sample, bin]`` and drift ``[step]``."""
    data = shear_data(g1, g2, sigma, mask, device=device)
    steps = timestep_sequence(prior.schedule.T, args.n_steps)
    guidance = dps_guidance(
        data,
        prior.to_kappa,
        prior.schedule.alphas_cumprod,
        steps,
        scaling=LikelihoodScaling.from_sampling(kw),
        step=kw["step"],
        zeta=kw["zeta"],
    )
    gen = torch.Generator(device=device).manual_seed(seed)
    diag = TrajectoryDiagnostic(prior.schedule.alphas_cumprod)
    shape = (args.n_samples, *g1.shape)
    x = ddim_sample(network, prior.schedule, shape, steps, args.eta, gen, guidance, diag)
    with torch.no_grad():
        kappa = prior.to_kappa(x.float())
        c2 = chi2(kappa, data) / data.dof.to(kappa.device)
    drift = diag.drift().mean(axis=(1, 2))  # [step]: rms(x_t) over its marginal expectation
    return kappa.double().cpu().numpy(), c2.double().cpu().numpy(), drift


def tarp_errors(samples, truth, refs, seed):
    """max |ECP − α| (prior references) for all bins jointly, then each bin: ``[1 + bin]``.

    The validation stage's TARP (8 × 8 sub-regions of 2 × 2 blocks, as config/config.yaml),
    with 20 bootstrap resamplings: only the curve's largest departure is printed.
    """
    config = {"seed": seed, "validation": {"n_alpha": 21, "n_bootstrap": 20}}
    res = run_coverage(*tarp_inputs(samples, truth, refs, 8, 2), config)
    return np.array([res["prior", b].max_error for b in range(truth.shape[1] + 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--cutouts", required=True, help="cut-outs .npy [patch, bin, n, n]")
    ap.add_argument("--holdout", action="store_true", help="take the checkpoint's held-out rows")
    ap.add_argument("--noise-patch", required=True, help="data patch FITS (SIGMA, MASK)")
    ap.add_argument("--signal-power", required=True, help="signal power FITS for Wiener")
    ap.add_argument("--pixel-scale", type=float, default=4.0, help="arcmin")
    ap.add_argument("--ks-smoothing", type=float, default=8.0, help="arcmin")
    ap.add_argument("--n-truth", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--n-steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the DPS runs")
    ap.add_argument("--n-references", type=int, default=64)
    ap.add_argument("--n-ell", type=int, default=8)
    ap.add_argument("--setting", action="append", required=True, help="name:key=value,...")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--bf16-check", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    state = load_checkpoint(args.model)
    prior = prior_from_state(state, device)
    cut = np.load(args.cutouts, mmap_mode="r")
    rows = np.asarray(state["holdout"]) if args.holdout else np.arange(len(cut))
    rows = rows[np.linspace(0, len(rows) - 1, min(args.n_truth, len(rows))).astype(int)]
    truth = np.asarray(cut[rows], dtype=np.float64)
    with fits.open(args.noise_patch) as h:
        sigma = np.asarray(h["SIGMA"].data, dtype=np.float64)
        mask = np.asarray(h["MASK"].data, dtype=np.float64)
    sigma = np.where(mask > 0, sigma, 1.0)
    g1, g2 = mock_shear(truth, sigma, mask, args.seed)
    n_bins, npix = truth.shape[1], truth.shape[-1]
    print(
        f"device {device}, prior step {prior.step}, {len(truth)} truths x {args.n_samples} "
        f"samples, {args.n_steps} steps, eta {args.eta}, {args.precision}; "
        f"{100 * mask.mean():.0f}% of pixels observed"
    )

    edges = log_ell_bins(npix, args.pixel_scale, args.n_ell)
    ell_cl, cl_pow = read_signal_power(args.signal_power, n_bins)
    wiener = np.stack(
        [
            lensing.wiener_filter(
                g1[i], g2[i], sigma, mask, ell_cl, cl_pow, args.pixel_scale, pad=16, tol=1e-5
            ).kappa
            for i in range(len(truth))
        ]
    )
    ks, _ = lensing.kaiser_squires_patch(g1, g2, mask, args.pixel_scale, 16, args.ks_smoothing)

    def rho(m):
        ell, r = stats.correlation_coefficient(m, truth, args.pixel_scale, edges, average_axes=0)
        return ell, r

    ell, rho_w = rho(wiener)
    _, rho_ks = rho(ks)
    print("ell      " + " ".join(f"{e:7.0f}" for e in ell))
    for b in range(n_bins):
        print(f"bin {b + 1} wiener " + " ".join(f"{v:7.3f}" for v in rho_w[b]))
        print(f"bin {b + 1} KS     " + " ".join(f"{v:7.3f}" for v in rho_ks[b]))

    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(args.seed)
        steps = timestep_sequence(prior.schedule.T, args.n_steps)
        refs = prior.to_kappa(
            ddim_sample(prior.model, prior.schedule, (args.n_references, n_bins, npix, npix),
                        steps, args.eta, gen)
        )  # fmt: skip
        refs = refs.double().cpu().numpy()

    settings = [parse_setting(s) for s in args.setting]
    runs = [(name, kw, args.precision) for name, kw in settings]
    if args.bf16_check:
        runs.append((settings[0][0] + "-bf16", settings[0][1], "bf16"))
    means = {}
    for name, kw, precision in runs:
        network = prepare_network(prior.model, device, precision)
        t0 = time.perf_counter()
        out = [
            posterior(prior, network, g1[i], g2[i], sigma, mask, kw, args, device, 1000 + i)
            for i in range(len(truth))
        ]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        samples = np.stack([o[0] for o in out], axis=1)  # [S, N, bin, n, n]
        c2 = np.stack([o[1] for o in out], axis=1)
        drift = np.mean([o[2] for o in out], axis=0)
        mean = samples.mean(axis=0)
        means[name] = (mean, samples.std(axis=0))
        _, rho_m = rho(mean)
        _, cl_s = stats.power_spectrum_flat(samples, args.pixel_scale, edges)
        _, cl_t = stats.power_spectrum_flat(truth, args.pixel_scale, edges)
        cl_ratio = cl_s.mean(axis=(0, 1)) / cl_t.mean(axis=0)
        tarp = tarp_errors(samples, truth, refs, args.seed)
        print(
            f"\n[{name}] {kw} {precision}: {seconds:.1f} s, "
            f"{len(truth) * args.n_samples / seconds:.2f} samples/s; "
            f"TARP max|ECP-a| joint {tarp[0]:.3f}, bins {np.round(tarp[1:], 3).tolist()}; "
            f"drift max|rms(x_t)/expected - 1| {np.abs(drift - 1).max():.3f}"
        )
        for b in range(n_bins):
            hi = ell > 477
            print(
                f"bin {b + 1} mean   " + " ".join(f"{v:7.3f}" for v in rho_m[b])
                + f" | chi2/dof {c2[..., b].mean():.3f}"
                + f" | max|Cl/Cl_t-1| {np.abs(cl_ratio[b] - 1).max():.2f}"
                + f" | hi-l rho mean-wiener {np.mean(rho_m[b][hi] - rho_w[b][hi]):+.3f}"
            )  # fmt: skip
    if args.bf16_check:
        ref_name = settings[0][0]
        (m32, s32), (m16, _) = means[ref_name], means[ref_name + "-bf16"]
        mc = s32 * np.sqrt(2.0 / args.n_samples)  # MC error of a difference of two means
        z = (m16 - m32) / mc
        print(
            f"\nbf16 vs fp32 ({ref_name}, same seeds): rms of (mean difference / MC error) "
            f"per bin {np.round(np.sqrt((z**2).mean(axis=(0, 2, 3))), 3).tolist()} "
            "(1 = statistically equivalent samplers)"
        )


if __name__ == "__main__":
    main()
