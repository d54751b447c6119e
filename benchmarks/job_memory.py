"""Peak memory of every job of a Snakemake run against the ``mem_mb`` it declared.

Reads the run's Snakemake log (the console output or ``.snakemake/log/*.snakemake.log``),
which lists each job with its benchmark file and resources, and each job's benchmark TSV
(``max_rss``, MB). Prints a markdown table, one row per job with a benchmark, and exits 1
if any job's peak exceeded its declaration. Jobs without a ``benchmark:`` are listed after
the table (their peak is not measured).

    python benchmarks/job_memory.py /path/to/snakemake.log
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

_RULE = re.compile(r"^\s*(?:local)?rule (\w+):\s*$")
_FIELD = re.compile(r"^\s+(benchmark|wildcards|resources): (.*)$")


def jobs(log_text: str) -> list[dict[str, str]]:
    """Each job block of a Snakemake log: rule, benchmark, wildcards, mem_mb (as logged)."""
    out: list[dict[str, str]] = []
    for line in log_text.splitlines():
        m = _RULE.match(line)
        if m:
            out.append({"rule": m.group(1)})
            continue
        f = _FIELD.match(line)
        if f and out:
            key, value = f.groups()
            if key == "resources":
                mem = re.search(r"\bmem_mb=(\d+)", value)
                out[-1]["mem_mb"] = mem.group(1) if mem else ""
            else:
                out[-1][key] = value.strip()
    return out


def peak_rss_mb(tsv: Path) -> float:
    """The largest ``max_rss`` (MB) of a Snakemake benchmark file (one row per repeat)."""
    with tsv.open() as f:
        return max(float(row["max_rss"]) for row in csv.DictReader(f, delimiter="\t"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="the Snakemake log of the run")
    args = ap.parse_args()
    rows, unmeasured, over = [], [], 0
    seen = set()
    for job in jobs(args.log.read_text()):
        bench = job.get("benchmark")
        key = (job["rule"], job.get("wildcards", ""))
        if key in seen or job["rule"] == "all":
            continue
        seen.add(key)
        if not bench or not Path(bench).is_file():
            unmeasured.append(" ".join(k for k in key if k))
            continue
        peak = peak_rss_mb(Path(bench))
        declared = float(job.get("mem_mb") or "nan")
        ok = peak <= declared
        over += not ok
        rows.append((job["rule"], job.get("wildcards", ""), declared, peak, ok))
    print("| rule | wildcards | declared mem_mb | peak RSS (MB) | peak / declared | within |")
    print("|---|---|---|---|---|---|")
    for rule, wc, declared, peak, ok in rows:
        print(
            f"| {rule} | {wc} | {declared:.0f} | {peak:.0f} | {peak / declared:.2f} | "
            f"{'yes' if ok else '**NO**'} |"
        )
    if unmeasured:
        print(f"\nNo benchmark file (peak not measured): {', '.join(unmeasured)}")
    print(f"\n{len(rows)} jobs measured, {over} above their declared mem_mb")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
