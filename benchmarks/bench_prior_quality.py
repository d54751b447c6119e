"""Quality of a trained prior: its samples against held-out cut-outs (C_ℓ, PDF, peaks).

Draws unconditional DDIM samples from ``model.pt`` and compares, per tomographic bin,
- the mean power spectrum C_ℓ (ratio samples / held-out over all ℓ bins of the patch),
- the one-point κ PDF and the peak counts, in units of the held-out set's standard error
  (χ = difference of means / combined standard error of the two means, per histogram bin)
  and of the held-out set's scatter (difference of means / standard deviation of one held-out
  cut-out's histogram, "max|d|/sd").
Prints the figures and writes a PNG.

    python benchmarks/bench_prior_quality.py --model results/prior/model.pt \
        --cutouts results/training/sim000_cutouts.npy --png docs/figures/prior_quality.png

``--make-standin PATH`` first writes a stand-in cut-out file (correlated 4-bin shifted-
lognormal flat fields whose Gaussian part follows the DES-Y3 theory C_ℓ of
../shared/data, or a power law where that is absent) for use before simulated skies exist.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from kappadiff import stats
from kappadiff.diffusion.checkpoint import load_checkpoint, prior_from_state
from kappadiff.diffusion.data import CutoutSet, open_cutouts
from kappadiff.stages.prior import draw_prior_samples

ARCMIN = np.pi / 180 / 60
THEORY = Path(__file__).resolve().parents[2] / "shared" / "data" / "desy3_kappa_cl.npy"


def make_standin(n: int, npix: int, pixel_arcmin: float, seed: int) -> np.ndarray:
    """Stand-in κ cut-outs float32 ``[n, 4, npix, npix]`` (periodic flat fields)."""
    rng = np.random.default_rng(seed)
    a_pix = (pixel_arcmin * ARCMIN) ** 2
    lx = 2 * np.pi * np.fft.fftfreq(npix, d=pixel_arcmin * ARCMIN)
    ell = np.hypot(*np.meshgrid(lx, lx, indexing="ij"))
    if THEORY.exists():
        cl_table = np.load(THEORY)  # [4, 4, ell]
        cl = np.stack(
            [
                [np.interp(ell, np.arange(cl_table.shape[-1]), cl_table[i, j]) for j in range(4)]
                for i in range(4)
            ]
        )
    else:
        amp = np.array([1.0, 2.0, 3.0, 4.0]) * 1e-9
        shape = np.maximum(ell, 50.0) ** -1.2
        cl = np.sqrt(amp[:, None, None, None] * amp[None, :, None, None]) * shape * 0.9
        cl[np.arange(4), np.arange(4)] /= 0.9
    cl[..., 0, 0] = 0.0
    # Cholesky of the 4x4 bin covariance at each mode (jitter for the ℓ = 0 zero matrix)
    chol = np.linalg.cholesky(
        np.moveaxis(cl / a_pix, (0, 1), (-2, -1)) + 1e-30 * np.eye(4)
    )  # [npix, npix, 4, 4]
    out = np.empty((n, 4, npix, npix), np.float32)
    lam = np.array([0.01, 0.015, 0.02, 0.025])[:, None, None]  # lognormal shifts per bin
    for i in range(n):
        w = np.fft.fft2(rng.standard_normal((4, npix, npix)))
        g = np.fft.ifft2(np.einsum("yxij,jyx->iyx", chol, w)).real
        var = g.var(axis=(1, 2), keepdims=True)
        out[i] = lam * (np.exp(g / lam - var / (2 * lam**2)) - 1)
    return out


def chi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of the means of a and b over axis 0 in units of its standard error."""
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    return np.where(se > 0, (a.mean(0) - b.mean(0)) / np.where(se > 0, se, 1), 0.0)


def scatter_units(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of the means of a and b over axis 0 in units of b's scatter (one map's)."""
    sd = b.std(0, ddof=1)
    return np.where(sd > 0, (a.mean(0) - b.mean(0)) / np.where(sd > 0, sd, 1), 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--cutouts", nargs="+", required=True)
    ap.add_argument("--pixel-scale", type=float, default=4.0, help="arcmin")
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", default=None)
    ap.add_argument(
        "--make-standin",
        type=int,
        default=0,
        metavar="N",
        help="write N stand-in cut-outs to --cutouts[0] and exit",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make_standin:
        from kappadiff.products import save_npy

        save_npy(args.cutouts[0], make_standin(args.make_standin, 64, args.pixel_scale, 1))
        print(f"wrote {args.make_standin} stand-in cut-outs to {args.cutouts[0]}")
        return

    ckpt = load_checkpoint(args.model)
    prior = prior_from_state(ckpt)
    held = CutoutSet(open_cutouts(args.cutouts), augment=False).read(ckpt["holdout"].numpy())
    t0 = time.perf_counter()
    samples = draw_prior_samples(prior, args.n_samples, args.ddim_steps, args.eta, seed=123)
    dt = time.perf_counter() - t0
    print(
        f"model step {prior.step}; {len(samples)} samples ({args.ddim_steps} DDIM steps, "
        f"eta {args.eta}) in {dt:.1f} s; {len(held)} held-out cut-outs"
    )

    npix = held.shape[-1]
    edges = stats.ell_bins_linear(npix, npix, args.pixel_scale)
    ell, cl_s = stats.power_spectrum_flat(samples, args.pixel_scale, edges)
    _, cl_h = stats.power_spectrum_flat(held, args.pixel_scale, edges)
    ratio = cl_s.mean(0) / cl_h.mean(0)  # [bin, ell]
    rows = []
    for b in range(held.shape[1]):
        lo, hi = np.percentile(held[:, b], [0.5, 99.5])
        pdf_edges = np.linspace(lo, hi, 21)
        _, p_s = stats.pdf(samples[:, b], pdf_edges)
        _, p_h = stats.pdf(held[:, b], pdf_edges)
        pk_edges = np.linspace(lo, hi, 11)
        _, k_s = stats.peak_counts(samples[:, b], pk_edges)
        _, k_h = stats.peak_counts(held[:, b], pk_edges)
        c_pdf, c_pk = chi(p_s, p_h), chi(k_s.astype(float), k_h.astype(float))
        u_pdf = scatter_units(p_s, p_h)
        u_pk = scatter_units(k_s.astype(float), k_h.astype(float))
        rows.append(
            (
                b,
                np.abs(ratio[b] - 1).max(),
                np.median(np.abs(ratio[b] - 1)),
                np.abs(c_pdf).max(),
                np.mean(np.abs(c_pdf) < 2),
                np.abs(c_pk).max(),
                np.mean(np.abs(c_pk) < 2),
                samples[:, b].std() / held[:, b].std(),
                np.abs(u_pdf).max(),
                np.abs(u_pk).max(),
            )
        )
    print(f"ell range {ell[0]:.0f}-{ell[-1]:.0f} ({len(ell)} bins)")
    print(
        "bin  max|Cl ratio-1|  median|..|  PDF max|chi|  PDF frac|chi|<2  "
        "peaks max|chi|  peaks frac|chi|<2  std ratio  PDF max|d|/sd  peaks max|d|/sd"
    )
    for r in rows:
        print(
            f"{r[0] + 1:3d}  {r[1]:15.3f}  {r[2]:10.3f}  {r[3]:12.2f}  {r[4]:15.2f}  "
            f"{r[5]:14.2f}  {r[6]:17.2f}  {r[7]:9.3f}  {r[8]:12.2f}  {r[9]:14.2f}"
        )
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        for b in range(held.shape[1]):
            axes[0].semilogx(ell, ratio[b], label=f"bin {b + 1}")
            lo, hi = np.percentile(held[:, b], [0.5, 99.5])
            e = np.linspace(lo, hi, 21)
            c, p_h = stats.pdf(held[:, b], e)
            _, p_s = stats.pdf(samples[:, b], e)
            axes[1].semilogy(c, p_h.mean(0), color=f"C{b}")
            axes[1].semilogy(c, p_s.mean(0), color=f"C{b}", ls="--")
        axes[0].axhspan(0.8, 1.2, color="0.9")
        axes[0].set_xlabel("ℓ")
        axes[0].set_ylabel("C_ℓ prior / C_ℓ held out")
        axes[0].legend()
        axes[1].set_xlabel("κ")
        axes[1].set_ylabel("PDF (solid held out, dashed prior)")
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
