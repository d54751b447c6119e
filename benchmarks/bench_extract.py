"""Benchmark: all full-sky cut-outs through an index table vs a loop over healpy.gnomview.

Paper scale by default: 2,146 patches of 256 x 1' from nside-4096 maps, 4 bins. The maps of
the 4 bins share one table, so one bin map is held at a time (805 MB) and the per-bin gather
is timed for every bin; gnomview is timed on a sample of patches and scaled to all
2,146 x 4 projections. One core (run with OMP_NUM_THREADS=1). Times are CPU seconds of this
process (time.process_time), which a busy shared machine does not inflate; wall-clock
seconds are printed beside them.

    python benchmarks/bench_extract.py [--nside 4096] [--npix 256] [--scale 1.0] [--sample 20]
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import contextmanager

import healpy as hp
import matplotlib
import numpy as np

from kappadiff import sphere

matplotlib.use("Agg")


@contextmanager
def timer(acc: dict, key: str):
    """Add the CPU and wall seconds of the block to ``acc[key]``."""
    c0, w0 = time.process_time(), time.perf_counter()
    yield
    cpu, wall = acc.get(key, (0.0, 0.0))
    acc[key] = (cpu + time.process_time() - c0, wall + time.perf_counter() - w0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=4096)
    ap.add_argument("--npix", type=int, default=256)
    ap.add_argument("--scale", type=float, default=1.0, help="pixel scale, arcmin")
    ap.add_argument("--bins", type=int, default=4)
    ap.add_argument("--sample", type=int, default=20, help="patches timed with gnomview")
    args = ap.parse_args()

    ra, dec = sphere.fullsky_layout(args.npix * args.scale / 60.0)
    rng = np.random.default_rng(0)
    npix_hp = hp.nside2npix(args.nside)
    print(f"{len(ra)} patches of {args.npix} px x {args.scale}' from nside {args.nside}")

    t = {}
    with timer(t, "table"):
        table = sphere.pixel_table(args.nside, ra, dec, args.npix, args.scale)
    print(
        f"index table build (once per geometry): {t['table'][0]:.1f} s CPU "
        f"({t['table'][1]:.1f} s wall), {table.nbytes / 1e9:.2f} GB"
    )

    sample = rng.choice(len(ra), args.sample, replace=False)
    for b in range(args.bins):
        m = rng.standard_normal(npix_hp, dtype=np.float32)
        with timer(t, "gather"):
            out = sphere.extract(m, table)
        if b == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for p in sample:
                    with timer(t, "gnomview"):
                        img = hp.gnomview(
                            m,
                            rot=(ra[p], dec[p], 0.0),
                            xsize=args.npix,
                            reso=args.scale,
                            return_projected_map=True,
                            no_plot=True,
                        )
                    assert np.array_equal(np.asarray(img, dtype=np.float32), out[p, 0])
        del m, out
    t_table, t_gather = t["table"][0], t["gather"][0]
    per_gnom = t["gnomview"][0] / args.sample
    t_gnom_all = per_gnom * len(ra) * args.bins
    print(
        f"gather, {args.bins} bins x {len(ra)} patches: {t_gather:.1f} s CPU "
        f"({t['gather'][1]:.1f} s wall)"
    )
    print(
        f"gnomview: {per_gnom * 1e3:.0f} ms CPU a patch ({args.sample} timed, same pixels; "
        f"{t['gnomview'][1] / args.sample * 1e3:.0f} ms wall)"
    )
    print(f"gnomview, all {len(ra)} x {args.bins} (scaled): {t_gnom_all:.0f} s CPU")
    print(f"speed-up, gather only (table reused across skies): {t_gnom_all / t_gather:.0f}x")
    print(f"speed-up, table build + gather: {t_gnom_all / (t_table + t_gather):.0f}x")


if __name__ == "__main__":
    main()
