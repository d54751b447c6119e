"""Pixelisation benchmark: throughput into the paper-scale layout, and streaming memory.

1. throughput: ``--n-galaxies`` galaxies (held in memory, so no disk read is timed), uniform
   over the DES footprint, pixelised into the paper-scale footprint layout (~410 patches of
   256 x 256 1' pixels, 4 bins) with ``catalogue.memory_mb`` of records or accumulators.
   Prints galaxies and galaxy-patch assignments per second on one core, up to the first
   patch's maps and for the whole run (every patch's maps).
   The kernels are compiled (or loaded from numba's cache) by a warm-up run first, timed
   apart; ``--fresh-jit`` compiles them into an empty cache to time the compilation.
2. memory: writes a ``--n-rows`` FITS catalogue (streamed), then pixelises it streamed in
   chunks into the default-scale footprint layout; prints the peak resident memory.

Each part runs in its own process so that its peak memory (ru_maxrss) is its own.

    python benchmarks/bench_pixelise.py --n-galaxies 10000000 --n-rows 100000000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _footprint_galaxies(rng, n, mask, chunk=1_000_000):
    """Positions uniform on the sphere inside a HEALPix mask, in chunks of ``chunk``."""
    import healpy as hp

    nside = hp.npix2nside(mask.size)
    _, dec = hp.pix2ang(nside, np.flatnonzero(mask), lonlat=True)
    zlo, zhi = np.sin(np.radians(dec.min() - 1)), np.sin(np.radians(dec.max() + 1))
    done = 0
    while done < n:
        m = min(chunk, n - done)
        ra = rng.uniform(0, 360, 4 * m)
        dec = np.degrees(np.arcsin(rng.uniform(zlo, zhi, 4 * m)))
        keep = mask[hp.ang2pix(nside, ra, dec, lonlat=True)]
        ra, dec = ra[keep][:m], dec[keep][:m]
        done += ra.size
        yield ra, dec


def _layout(npix, scale):
    from kappadiff import footprint, sphere
    from kappadiff.catalogue import PatchGrid

    mask = footprint.footprint_mask("des", 256)
    ra0, dec0, _ = sphere.footprint_layout(mask, 3.5, 0.5, npix * scale / 60)
    return PatchGrid(ra0, dec0, npix, scale), mask


def warm_up(fresh: bool) -> None:
    """Pixelise a few galaxies: compiles the kernels (or loads them from numba's cache)."""
    from kappadiff.catalogue import GalaxyChunk, PatchGrid, pixelise_catalogue

    rng = np.random.default_rng(0)
    n = 1000
    chunk = GalaxyChunk(
        rng.uniform(29, 31, n),
        rng.uniform(-31, -29, n),
        *rng.normal(0, 0.2, (2, n)),
        np.ones(n),
        rng.integers(0, 4, n),
    )
    grid = PatchGrid(np.array([30.0]), np.array([-30.0]), 16, 6.0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in pixelise_catalogue(lambda: [chunk], grid, 4):
        pass
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    source = "compiled, empty cache" if fresh else "compiled, or loaded from numba's cache"
    print(f"kernel warm-up ({source}): CPU {cpu:.2f} s (wall {wall:.2f} s), not timed below")


def throughput(n_galaxies: int, memory_mb: float, fresh_jit: bool) -> None:
    from kappadiff.catalogue import (
        RECORD_BYTES,
        GalaxyChunk,
        patch_groups,
        pixelise_catalogue,
        record_budget,
    )

    warm_up(fresh_jit)
    rng = np.random.default_rng(1)
    grid, mask = _layout(256, 1.0)
    chunks = []
    for ra, dec in _footprint_galaxies(rng, n_galaxies, mask):
        n = ra.size
        e = rng.normal(0, 0.26, (2, n))
        chunks.append(GalaxyChunk(ra, dec, e[0], e[1], np.ones(n), rng.integers(0, 4, n)))
    groups = patch_groups(len(grid), 4, grid.npix, memory_mb)
    budget = record_budget(len(grid), 4, grid.npix, memory_mb)
    print(f"layout: {len(grid)} patches of 256 x 256 x 1' (memory_mb {memory_mb:g}):", end=" ")
    print(f"records up to {budget / 2**20:.0f} MB, else {len(groups)} dense groups")
    # CPU time of this process: per-core figures that stay meaningful on a shared machine
    t0, c0 = time.perf_counter(), time.process_time()
    t_first = c_first = None
    acct = None
    for _, _, acct in pixelise_catalogue(lambda: chunks, grid, 4, memory_mb=memory_mb):  # noqa: B007
        if t_first is None:
            t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"galaxies: {acct.read:,}, used {acct.used:,}, assignments {acct.assignments:,}")
    sparse = acct.assignments * RECORD_BYTES <= budget
    path = "one pass, buffered records" if sparse else f"dense, {len(groups)} passes"
    print(
        f"up to the first patch's maps (all patches assigned): CPU {c_first:.2f} s "
        f"(wall {t_first:.1f} s) = {acct.read / c_first:.3g} galaxies/s/core, "
        f"{acct.assignments / c_first:.3g} assignments/s/core"
    )
    print(
        f"whole pixelisation ({path}, maps of every patch): CPU {cpu:.2f} s "
        f"(wall {total:.1f} s) = {acct.read / cpu:.3g} galaxies/s/core, "
        f"{acct.assignments / cpu:.3g} assignments/s/core"
    )


def memory(n_rows: int, chunk_size: int) -> None:
    from kappadiff.catalogue import pixelise_catalogue
    from kappadiff.catalogue.io import iter_fits_catalogue, write_fits_catalogue

    rng = np.random.default_rng(2)
    grid, mask = _layout(64, 4.0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = os.path.join(tmp, "catalogue.fits")

        def rows():
            for ra, dec in _footprint_galaxies(rng, n_rows, mask, chunk=chunk_size):
                n = ra.size
                e = rng.normal(0, 0.26, (2, n))
                yield {
                    "ra": ra,
                    "dec": dec,
                    "e1": e[0],
                    "e2": e[1],
                    "weight": np.ones(n),
                    "bin": rng.integers(0, 4, n),
                }

        t0 = time.perf_counter()
        write_fits_catalogue(path, rows())
        size_gb = os.path.getsize(path) / 1e9
        print(f"wrote {n_rows:,} rows ({size_gb:.1f} GB) in {time.perf_counter() - t0:.0f} s")
        after_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        acct = None
        for _, _, acct in pixelise_catalogue(  # noqa: B007 - the last accounting is kept
            lambda: iter_fits_catalogue(path, chunk_size=chunk_size), grid, 4, memory_mb=1200
        ):
            pass
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"streamed and pixelised {acct.read:,} rows into {len(grid)} patches", end=" ")
        print(f"of 64 x 64 x 4' in {dt:.0f} s wall, {cpu:.0f} s CPU")
        print(f"galaxy-patch assignments {acct.assignments:,}")
        print(f"peak RSS: {peak:.0f} MB (writing: {after_write:.0f} MB), chunk {chunk_size:,} rows")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-galaxies", type=int, default=10_000_000)
    ap.add_argument("--n-rows", type=int, default=100_000_000)
    ap.add_argument("--chunk-size", type=int, default=1_000_000)
    ap.add_argument("--memory-mb", type=float, default=1200)
    ap.add_argument("--part", choices=["throughput", "memory", "both"], default="both")
    ap.add_argument(
        "--fresh-jit",
        action="store_true",
        help="compile the kernels into an empty numba cache (measures the compile time)",
    )
    args = ap.parse_args()
    if args.fresh_jit:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()
    if args.part == "throughput":
        throughput(args.n_galaxies, args.memory_mb, args.fresh_jit)
    elif args.part == "memory":
        memory(args.n_rows, args.chunk_size)
    else:
        for part in ("throughput", "memory"):
            print(f"== {part}", flush=True)
            rest = [a for a in sys.argv[1:] if a not in ("--part", "both")]
            subprocess.run([sys.executable, __file__, *rest, "--part", part], check=True)


if __name__ == "__main__":
    main()
