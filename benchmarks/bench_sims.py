"""Simulated skies: wall time and peak memory per nside, and C_ℓ against Limber.

Each nside runs in a fresh subprocess so that its peak resident memory (measured once the
sky is made, before the spectra are analysed) is its own. A sky
is the library's chain (CAMB cosmology, shells, Born weights, GLASS lognormal shells,
Born sum) with the default config's shells (to z = 3 every 150 Mpc, lmax = 2 nside);
"setup" is the CAMB cosmology, Born weights, shell spectra and their Gaussian solution.
Shells are independent work, so at large nside a subset of the shells may be timed
(``--max-shells``) and the sky's time is the per-shell time times the shell count plus
the set-up; the peak memory (one shell in memory at a time) is that of a full sky.

At ``--limber-nside`` the auto- and cross-spectra of ``--limber-skies`` full skies are
compared with the continuous Limber prediction in ℓ bins over 30 <= ℓ <= nside.

Usage::

    python benchmarks/bench_sims.py --nside 512 1024 2048 --max-shells 0 0 8 \\
        --limber-nside 1024 --limber-skies 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

import numpy as np

SHELL_ZMAX = 3.0
SHELL_DCHI = 150.0


def one_sky(nside: int, max_shells: int, n_skies: int, spectra: bool) -> dict:
    """Make ``n_skies`` skies at ``nside`` in this process; timings and C_ℓ ratios."""
    import healpy as hp

    from kappadiff import sims
    from kappadiff.stages.sims import source_nz

    t0 = time.perf_counter()
    model = sims.lensing_cosmology(sims.Cosmology(), zmax=SHELL_ZMAX)
    z, nz = source_nz("builtin")
    edges = sims.shell_edges(model, SHELL_ZMAX, SHELL_DCHI)
    n_shell = len(edges) - 1
    lmax = 2 * nside
    weights = sims.born_weights(model, edges, z, nz)
    gls = sims.lognormal_gaussian_cls(sims.shell_matter_cls(model, edges, lmax))
    setup = time.perf_counter() - t0
    n_run = n_shell if max_shells <= 0 else min(max_shells, n_shell)
    out = {"nside": nside, "lmax": lmax, "n_shell": n_shell, "shells_run": n_run}
    out["setup_s"] = setup
    sky_times, measured = [], 0.0
    for seed in range(n_skies):
        t1 = time.perf_counter()
        shells = itertools.islice(
            sims.lognormal_shells(gls, nside, np.random.default_rng(seed)), n_run
        )
        kappa = sims.born_kappa(enumerate(shells), weights[:, :n_run])
        sky_times.append(time.perf_counter() - t1)
        # peak of making the sky (KiB on Linux), before any analysis of it
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if spectra:
            alms = [hp.map2alm(k, lmax=nside, iter=3, use_pixel_weights=False) for k in kappa]
            cl = np.array([[hp.alm2cl(a, b) for b in alms] for a in alms])
            measured = measured + cl / n_skies
            mean, std = kappa.mean(axis=1), kappa.std(axis=1)
            skew = ((kappa - mean[:, None]) ** 3).mean(axis=1) / std**3
            out.setdefault("mean_over_std", []).append((mean / std).tolist())
            out.setdefault("skewness", []).append(skew.tolist())
        del kappa
    per_shell = float(np.mean(sky_times)) / n_run
    out["per_shell_s"] = per_shell
    out["sky_s"] = setup + per_shell * n_shell
    if spectra:
        ell = np.arange(nside + 1)
        prediction = sims.limber_kappa_cls(model, z, nz, ell)
        edges_ell = [e for e in (30, 60, 120, 250, 500) if e < nside] + [nside + 1]
        weight = 2 * ell + 1
        ratios = []
        for lo, hi in itertools.pairwise(edges_ell):
            band = slice(lo, hi)
            num = (measured[..., band] * weight[band]).sum(-1)
            ratios.append((num / (prediction[..., band] * weight[band]).sum(-1)).tolist())
        out["ell_edges"] = edges_ell
        out["ratio"] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument(
        "--max-shells", type=int, nargs="+", default=None, help="per nside; 0 = all"
    )
    parser.add_argument("--limber-nside", type=int, default=1024)
    parser.add_argument("--limber-skies", type=int, default=2)
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        nside, max_shells, n_skies, spectra = json.loads(args.child)
        print(json.dumps(one_sky(nside, max_shells, n_skies, spectra)))
        return

    max_shells = args.max_shells or [0] * len(args.nside)
    print("nside  lmax  shells(timed)  setup_s  per_shell_s  sky_s  peak_rss_GiB")
    rows = []
    for nside, limit in zip(args.nside, max_shells, strict=True):
        spectra = nside == args.limber_nside
        n_skies = args.limber_skies if spectra else 1
        child = json.dumps([nside, limit, n_skies, spectra])
        result = subprocess.run(
            [sys.executable, __file__, "--child", child],
            check=True,
            capture_output=True,
            text=True,
        )
        out = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(out)
        print(
            f"{nside:5d} {out['lmax']:5d} {out['n_shell']:5d}({out['shells_run']:2d})"
            f"  {out['setup_s']:7.1f}  {out['per_shell_s']:11.2f}  {out['sky_s']:6.0f}"
            f"  {out['peak_gib']:11.2f}",
            flush=True,
        )
        if spectra:
            print(f"  C_l / Limber at nside {nside}, {n_skies} skies, bins {out['ell_edges']}:")
            ratio = np.array(out["ratio"])  # [ell bin, i, j]
            for i in range(4):
                for j in range(i, 4):
                    print(
                        f"    bins {i + 1}x{j + 1}: " + " ".join(f"{r:.3f}" for r in ratio[:, i, j])
                    )
            print(f"    max |ratio - 1| = {np.abs(ratio - 1).max():.3f}")
            print(f"    skewness per sky and bin: {np.round(out['skewness'], 2).tolist()}")
            print(f"    mean/std per sky and bin: {np.round(out['mean_over_std'], 4).tolist()}")

    if len(rows) >= 2:
        n = np.array([r["nside"] for r in rows], float)
        t = np.array([r["sky_s"] for r in rows])
        m = np.array([r["peak_gib"] for r in rows])
        slope_t = np.polyfit(np.log(n), np.log(t), 1)[0]
        # memory is an offset plus a part proportional to the pixels
        coef_m = np.polyfit(12 * n**2, m, 1)
        t4096 = t[-1] * (4096 / n[-1]) ** slope_t
        m4096 = np.polyval(coef_m, 12 * 4096.0**2)
        print(
            f"scaling: time ∝ nside^{slope_t:.2f}; memory = {coef_m[1]:.2f} GiB + "
            f"{coef_m[0] * 2**30:.0f} B/pixel"
        )
        print(f"extrapolated nside 4096 sky: {t4096 / 60:.0f} min, {m4096:.1f} GiB")


if __name__ == "__main__":
    main()
