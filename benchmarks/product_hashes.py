"""Hash every product of a results folder: each FITS HDU's data, and each table's rows.

A redesign that must keep the products identical is checked by running one configuration
before and after it and comparing the two listings::

    python benchmarks/product_hashes.py results > before.txt
    ... change the code, rebuild results/ from empty ...
    python benchmarks/product_hashes.py results > after.txt
    diff before.txt after.txt && echo identical

FITS headers are left out: they carry dates, host names and the code version. Tables
(``.csv``, ``.tsv``) are hashed line by line with columns that hold wall-clock times dropped.
Logs, benchmarks, figures and checkpoints are left out (times, pixels of fonts and optimiser
state are not products a user reads as numbers); the checkpoint's model hash is in every
posterior header and its weights are compared by ``--checkpoints``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

# Columns of a table that hold times or host facts, not results.
TIME_COLUMNS = {"seconds", "wall_s", "time_s", "elapsed", "s", "h:m:s", "cpu_time", "max_rss"}
SKIPPED_DIRS = {"logs", "benchmarks", ".snakemake"}


def fits_rows(path: Path) -> list[str]:
    """One line per HDU: its index, name and the SHA-256 of its data (array or table)."""
    lines = []
    with fits.open(path, memmap=False) as hdus:
        for i, hdu in enumerate(hdus):
            data = hdu.data
            if data is None:
                digest = "-"
            elif isinstance(data, np.ndarray) and data.dtype.names is None:
                digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
            else:
                digest = hashlib.sha256(np.asarray(data).tobytes()).hexdigest()
            lines.append(f"{path}[{i}:{hdu.name}] {digest}")
    return lines


def table_rows(path: Path) -> list[str]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    if not rows:
        return [f"{path} empty"]
    keep = [i for i, name in enumerate(rows[0]) if name.strip().lower() not in TIME_COLUMNS]
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\x1f".join(row[i] for i in keep if i < len(row)) + "\n").encode())
    return [f"{path} {digest.hexdigest()} ({len(rows) - 1} rows)"]


def checkpoint_rows(path: Path) -> list[str]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    lines = []
    for key in ("ema", "model"):
        if key in state:
            digest = hashlib.sha256()
            for name, tensor in sorted(state[key].items()):
                digest.update(name.encode())
                digest.update(tensor.cpu().numpy().tobytes())
            lines.append(f"{path}[{key}] {digest.hexdigest()}")
    return lines


def product_rows(root: Path, checkpoints: bool = False) -> list[str]:
    lines = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or SKIPPED_DIRS & set(path.relative_to(root).parts):
            continue
        name = path.relative_to(root.parent)
        if path.suffix == ".fits":
            lines += [line.replace(str(path), str(name), 1) for line in fits_rows(path)]
        elif path.suffix in {".csv", ".tsv"}:
            lines += [line.replace(str(path), str(name), 1) for line in table_rows(path)]
        elif path.suffix == ".npy":
            digest = hashlib.sha256(np.load(path, mmap_mode="r").tobytes()).hexdigest()
            lines.append(f"{name} {digest}")
        elif path.suffix == ".pt" and checkpoints:
            lines += [line.replace(str(path), str(name), 1) for line in checkpoint_rows(path)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results folder to hash")
    parser.add_argument("--checkpoints", action="store_true", help="also hash model weights")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"{args.results} is not a folder")
    lines = product_rows(args.results, checkpoints=args.checkpoints)
    print("\n".join(lines))
    print(f"# {len(lines)} hashed products or HDUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
