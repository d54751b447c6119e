"""Benchmark: mosaic of the DES footprint patches onto HEALPix.

Paper scale by default: the ~410 footprint patches of config/desy3.yaml (256 x 1', DES
round-19 polygon, 3.5 deg spacing) onto nside 4096, 4 bins. Times the owner-patch
assignment (once per layout) and the mosaic of one [patch, bin, row, col] product with
that assignment (e.g. MEAN; STD costs the same again). One core (OMP_NUM_THREADS=1); CPU
seconds of this process, wall-clock beside them.

    python benchmarks/bench_mosaic.py [--nside 4096] [--npix 256] [--scale 1.0] [--bins 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from kappadiff import sphere
from kappadiff.stages.layout import footprint_layout_from_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=4096)
    ap.add_argument("--npix", type=int, default=256)
    ap.add_argument("--scale", type=float, default=1.0, help="pixel scale, arcmin")
    ap.add_argument("--bins", type=int, default=4)
    args = ap.parse_args()

    config = yaml.safe_load((ROOT / "config" / "desy3.yaml").read_text())
    ra, dec, _ = footprint_layout_from_config(config)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((len(ra), args.bins, args.npix, args.npix), dtype=np.float32)
    print(f"{len(ra)} patches of {args.npix} px x {args.scale}' -> nside {args.nside}")

    c0, w0 = time.process_time(), time.perf_counter()
    assign = sphere.mosaic_assignment(ra, dec, args.npix, args.scale, args.nside)
    c1, w1 = time.process_time(), time.perf_counter()
    maps, cov = sphere.mosaic(values, ra, dec, args.npix, args.scale, args.nside, assignment=assign)
    c2, w2 = time.process_time(), time.perf_counter()
    area = assign.pixels.size * 4 * np.pi * (180 / np.pi) ** 2 / cov.size
    print(f"covered: {assign.pixels.size} pixels, {area:.0f} deg^2, max overlap {cov.max()}")
    print(f"assignment: {c1 - c0:.1f} s CPU ({w1 - w0:.1f} s wall)")
    print(f"mosaic of {args.bins} bins: {c2 - c1:.1f} s CPU ({w2 - w1:.1f} s wall)")
    print(f"total: {c2 - c0:.1f} s CPU ({w2 - w0:.1f} s wall)")


if __name__ == "__main__":
    main()
