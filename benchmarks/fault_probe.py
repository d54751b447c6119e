"""Fault probe of issue 22: 32 bad inputs and faults on ``config/test.yaml``.

Builds one baseline run of the test configuration, then derives every case from a copy of
it (results, ``.snakemake`` metadata and all, so Snakemake sees the copy as up to date) and
runs single Snakemake targets there, as a hostile but fair user would. Cases 1-13 are the
13 findings of issue 22, numbered as there; cases 14-32 are of the kinds the issue found
handled (bad config values named, bad catalogue rows counted and reconciled, radians
caught, kill-and-resume identical, single-patch rebuild bit-identical, no pickle).

Each case has one pass criterion, the issue's "should"; the table gives it beside what
was observed and the verdict, ``handled`` or ``NOT handled``. A case whose mechanics fail
in a way the probe did not foresee is reported ``NOT handled: <first line of the error>``,
so the probe runs to the end on the code before and after the fixes.

The code probed is the checkout ``--repo`` (default: the one holding this script): its
``Snakefile``, its ``config/test.yaml`` and its ``src/`` first on ``PYTHONPATH`` of every
job. ``snakemake`` and ``python`` come from ``PATH``. About 10-15 minutes on 2 idle cores.

The resume cases (2, 11, 27, 28) stop a job the way a pre-emption does, SIGKILL to its
process group, once the documented resume files hold enough work:
``results/prior/checkpoint.pt`` and ``<posterior product>.partial.npz`` (array ``kappa``).

    python benchmarks/fault_probe.py --workdir /tmp/probe --out /tmp/fault_probe.md
    python benchmarks/fault_probe.py --workdir /tmp/probe --out p.md --cases 2,28 --reuse-baseline

Not part of the test suite (nothing here is collected by pytest).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: Products and inputs every case refers to, relative to a run directory.
RESULTS = "results"
DATA = f"{RESULTS}/data/patch_0000.fits"
TRUTH = f"{RESULTS}/truth/patch_0000.fits"
MODEL = f"{RESULTS}/prior/model.pt"
CHECKPOINT = f"{RESULTS}/prior/checkpoint.pt"
POSTERIOR = f"{RESULTS}/posterior/patch_0000.fits"
KS = f"{RESULTS}/baselines/ks/patch_0000.fits"
WIENER = f"{RESULTS}/baselines/wiener/patch_0000.fits"
CUTOUTS = f"{RESULTS}/training/sim000_cutouts.npy"
LAYOUT = f"{RESULTS}/layout/footprint.fits"
MOCK_KAPPA = f"{RESULTS}/sims/sim001/kappa.fits"
MOCK_FITS = f"{RESULTS}/catalogue/mock.fits"
METACAL = f"{RESULTS}/catalogue/mock_metacal.h5"
BASELINE_TARGETS = (
    f"{RESULTS}/config.resolved.yaml",
    DATA,
    TRUTH,
    MODEL,
    POSTERIOR,
    KS,
    WIENER,
)

#: Sampling settings of the resume cases: one sample a batch, and enough network
#: evaluations a sample (about a second or more each) for the probe to stop the job
#: between two batches.
RESUME_SAMPLING = {"n_samples": 4, "batch_size": 1, "n_steps": 200, "tuned_scaling": False}
#: Training settings of the resumed-training cases: checkpoints every 5 of 40 steps leave
#: a wide window to stop the job after the first checkpoint and before the model is written.
RESUME_PRIOR = {"train_steps": 40, "checkpoint_every": 5}
#: Lines of a failing job's log or of Snakemake's output that carry the error.
ERROR_LINE = re.compile(r"^\s*(?:[\w.]*(?:Error|Exception|Exit)\b|.*\b(?:ERROR|CRITICAL)\b)")
#: The time stamp of a logging record (left out of the table).
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
#: Snakemake's description of a failed job (its input/output lists name every file).
JOB_FIELD = re.compile(
    r"^\s+(input|output|log|jobid|reason|wildcards|resources|message|shell|threads|"
    r"benchmark|params|priority|conda-env|container|external_jobid):"
)


class ProbeError(RuntimeError):
    """The probe could not set a case up (a baseline job failed, a job would not stop)."""


@dataclass
class Row:
    """One line of the table.

    Attributes
    ----------
    case
        Case number as in issue 22 (1-13) or 14-32, with a letter for sub-cases.
    title
        What the case does.
    expected
        The pass criterion.
    observed
        What happened.
    handled
        Whether the criterion was met.
    error
        First line of an unforeseen error of the case's mechanics (then not handled).
    """

    case: str
    title: str
    expected: str
    observed: str = ""
    handled: bool = False
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.error:
            return f"NOT handled: {self.error}"
        return "handled" if self.handled else "NOT handled"


@dataclass
class Run:
    """A finished Snakemake call: exit status, console output, wall seconds."""

    rc: int
    output: str
    seconds: float


# --------------------------------------------------------------------------- the probe


class Probe:
    """Baseline, copies and Snakemake calls of one probe session.

    Parameters
    ----------
    repo
        Checkout whose ``Snakefile``, ``config/test.yaml`` and ``src/`` are probed.
    workdir
        Folder of the baseline (``base/``) and of the cases' copies (``cNN/``).
    timeout
        Seconds a Snakemake call may take before the probe stops it.
    verbose
        Print every Snakemake command.
    """

    def __init__(self, repo: Path, workdir: Path, timeout: float, verbose: bool) -> None:
        self.repo = repo
        self.workdir = workdir
        self.timeout = timeout
        self.verbose = verbose
        self.snakemake = shutil.which("snakemake") or "snakemake"
        self.env = dict(os.environ)
        # jobs import the probed checkout's package, ahead of any installed copy
        src = str(repo / "src")
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (src, os.environ.get("PYTHONPATH", "")) if p
        )
        self.base = workdir / "base"
        self.test_config = repo / "config" / "test.yaml"

    # ----------------------------------------------------------------- snakemake calls

    def command(
        self,
        rundir: Path,
        targets: Sequence[str],
        overrides: Mapping[str, Any] | None = None,
        flags: Sequence[str] = (),
    ) -> list[str]:
        """The Snakemake command line of a call (targets first: ``--configfile`` is greedy)."""
        configs = [str(self.test_config)]
        if overrides:
            path = rundir / "probe_overrides.yaml"
            rundir.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(dict(overrides), sort_keys=False))
            configs.append(str(path))
        return [
            self.snakemake,
            *targets,
            "--cores",
            "1",
            "--nolock",
            *flags,
            "--snakefile",
            str(self.repo / "Snakefile"),
            "--directory",
            str(rundir),
            "--configfile",
            *configs,
            "--config",
            f"results={RESULTS}",
        ]

    def smk(
        self,
        rundir: Path,
        targets: Sequence[str],
        overrides: Mapping[str, Any] | None = None,
        flags: Sequence[str] = (),
    ) -> Run:
        """Run Snakemake in ``rundir`` on ``targets`` and wait for it."""
        cmd = self.command(rundir, targets, overrides, flags)
        if self.verbose:
            print("   $", " ".join(cmd), file=sys.stderr)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=rundir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise ProbeError(
                f"snakemake {' '.join(targets)} ran past {self.timeout:.0f} s"
            ) from None
        return Run(proc.returncode, out, time.perf_counter() - t0)

    def smk_interrupted(
        self,
        rundir: Path,
        targets: Sequence[str],
        overrides: Mapping[str, Any] | None,
        ready: Callable[[], bool],
        poll: float = 0.02,
    ) -> float:
        """Start Snakemake and SIGKILL it, job and all, as soon as ``ready()`` holds.

        The process group is stopped (SIGSTOP) first, so nothing moves between the test
        and the kill, as when a node is pre-empted. Returns the seconds it ran.

        Raises
        ------
        ProbeError
            If Snakemake finished before ``ready()`` held.
        """
        cmd = self.command(rundir, targets, overrides)
        if self.verbose:
            print("   $", " ".join(cmd), "(interrupted)", file=sys.stderr)
        t0 = time.perf_counter()
        log = open(rundir / "probe_interrupted.out", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            cmd,
            cwd=rundir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if ready():
                    os.killpg(proc.pid, signal.SIGSTOP)
                    _kill_group(proc)
                    proc.wait()
                    return time.perf_counter() - t0
                if time.perf_counter() - t0 > self.timeout:
                    _kill_group(proc)
                    raise ProbeError(f"the job did not reach the kill point in {self.timeout} s")
                time.sleep(poll)
        finally:
            log.close()
        raise ProbeError(f"the job finished (exit {proc.returncode}) before it could be killed")

    # ----------------------------------------------------------------- run directories

    def build_baseline(self, reuse: bool) -> Run | None:
        """One run of ``config/test.yaml`` into ``workdir/base`` (the products the cases use)."""
        done = self.base / "probe_baseline.ok"
        if reuse and done.exists():
            return None
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)
        run = self.smk(self.base, BASELINE_TARGETS)
        if run.rc != 0:
            raise ProbeError(f"baseline run failed, exit {run.rc}: {main_error(run, self.base)}")
        done.write_text(f"{self.repo}\n")
        return run

    def copy(self, name: str) -> Path:
        """A fresh copy of the baseline (modification times and Snakemake metadata kept)."""
        dst = self.workdir / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(
            self.base,
            dst,
            symlinks=True,
            ignore=shutil.ignore_patterns("locks", "incomplete", "log", "probe_*"),
        )
        return dst

    def empty(self, name: str) -> Path:
        """An empty run directory (for the dry runs of bad configurations)."""
        dst = self.workdir / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        return dst


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- helpers


def first_line(text: str) -> str:
    """First non-empty line of ``text``, shortened for a table cell."""
    for line in str(text).splitlines():
        if line.strip():
            return shorten(line.strip())
    return shorten(str(text))


def shorten(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def failed_logs(run: Run, rundir: Path) -> list[Path]:
    """Logs of the jobs that failed in ``run`` (from Snakemake's 'Error in rule' blocks)."""
    paths, in_block = [], False
    for line in run.output.splitlines():
        if line.startswith("Error in rule"):
            in_block = True
        elif in_block and re.match(r"^\s+log:", line):
            for token in line.split(":", 1)[1].split():
                if token.endswith(".log"):
                    paths.append(rundir / token)
        elif in_block and not line.strip():
            in_block = False
    return [p for p in dict.fromkeys(paths) if p.exists()]


def log_error(path: Path) -> str:
    """The error lines of a log: exception and ERROR lines, and its last non-empty line."""
    lines = [
        LOG_STAMP.sub("", line.rstrip()) for line in path.read_text(errors="replace").splitlines()
    ]
    lines = [line for line in lines if line.strip()]
    picked = [line.strip() for line in lines if ERROR_LINE.match(line)]
    if lines and lines[-1].strip() not in picked:
        picked.append(lines[-1].strip())
    return "\n".join(picked)


def console_error(output: str) -> str:
    """Snakemake's console output less the failed jobs' descriptions (which list every file)."""
    keep = []
    for line in output.splitlines():
        if JOB_FIELD.match(line) or line.startswith(("Error in rule", "[")):
            continue
        if line.strip():
            keep.append(line.strip())
    return "\n".join(keep)


def error_text(run: Run, rundir: Path) -> str:
    """What a user is told of a failure: the failed jobs' log errors, else the console's."""
    logs = failed_logs(run, rundir)
    if logs:
        return "\n".join(log_error(p) for p in logs)
    return console_error(run.output)


def failed_rules(run: Run) -> list[str]:
    """Rules whose jobs failed in ``run``."""
    return list(dict.fromkeys(re.findall(r"^Error in rule (\w+)", run.output, re.M)))


def main_error(run: Run, rundir: Path) -> str:
    """The most telling single line of a failure, prefixed by the failed rule, for the table."""
    rules = failed_rules(run)
    prefix = f"{', '.join(rules)}: " if rules else ""
    text = error_text(run, rundir)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return prefix + "(no error text)"
    for line in reversed(lines):
        if re.search(r"Error|error|ERROR", line) and not line.startswith(("Traceback",)):
            return prefix + shorten(line)
    return prefix + shorten(lines[-1])


def read_header(path: Path, ext: int | str = 0):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        return hdul[ext].header.copy()


def read_hdus(path: Path) -> dict[str, np.ndarray]:
    """Every extension's data (images and tables as arrays), by name."""
    from astropy.io import fits

    out = {}
    with fits.open(path, memmap=False) as hdul:
        for i, hdu in enumerate(hdul[1:], start=1):
            if hdu.data is not None:
                out[hdu.name or str(i)] = np.array(hdu.data)
    return out


def load_torch(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def weights(state: Mapping[str, Any], key: str = "ema") -> dict:
    """A state dict of a checkpoint: the EMA weights (sampling), else the raw ones."""
    for k in (key, "ema", "model"):
        if isinstance(state.get(k), Mapping):
            return dict(state[k])
    raise ProbeError(f"checkpoint holds no state dict ('{key}'); keys {sorted(state)}")


def same_tensors(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write_catalogue(path: Path, rows: np.ndarray) -> Path:
    """Write a galaxy table (structured array) as a FITS binary table, extension 1."""
    import fitsio

    if path.exists():
        path.unlink()
    fitsio.write(str(path), rows, extname="CATALOGUE")
    return path


def read_catalogue(rundir: Path) -> np.ndarray:
    """The baseline's mock catalogue rows (ra, dec, e1, e2, weight, bin)."""
    import fitsio

    return np.asarray(fitsio.read(str(rundir / MOCK_FITS), ext=1))


def fits_source(path: Path, **fits_cfg: Any) -> dict[str, Any]:
    """Config overrides that pixelise the FITS table ``path`` (no tuned scaling needed)."""
    return {
        "catalogue": {"source": "fits", "fits": {"path": str(path), **fits_cfg}},
        "sampling": {"tuned_scaling": False},
    }


def rejection_counts(rows: np.ndarray, e_max: float = 1.0, n_bins: int = 4) -> dict[str, int]:
    """Rows rejected by reason, in the documented order (non-finite, bin -1, weight, |e|)."""
    cols = [rows[k].astype(np.float64) for k in ("ra", "dec", "e1", "e2", "weight")]
    finite = np.logical_and.reduce([np.isfinite(c) for c in cols])
    b = rows["bin"].astype(np.float64)
    finite &= np.isfinite(b)
    nobin = finite & (b == -1)
    w = rows["weight"].astype(np.float64)
    badw = finite & ~nobin & ~(w > 0)
    e = np.hypot(rows["e1"].astype(np.float64), rows["e2"].astype(np.float64))
    with np.errstate(invalid="ignore"):
        bade = finite & ~nobin & ~badw & ~(e < e_max)
    return {
        "REJNAN": int((~finite).sum()),
        "REJBIN": int(nobin.sum()),
        "REJWGT": int(badw.sum()),
        "REJELL": int(bade.sum()),
    }


def data_products(rundir: Path) -> list[Path]:
    return sorted((rundir / RESULTS / "data").glob("patch_*.fits"))


def set_mtime_like(path: Path, stat: os.stat_result) -> None:
    """Give ``path`` its former modification time, so only a forced target reruns."""
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def truncate(path: Path, size: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.truncate(size)
    set_mtime_like(path, st)


# --------------------------------------------------------------------------- cases


CASES: dict[int, tuple[str, Callable[[Probe], list[Row]]]] = {}


def scenario(fn: Callable[[Probe], Any]) -> Callable[[Probe], Any]:
    """Run a set-up shared by several cases once; a failure is kept and re-raised too."""
    done: dict[int, tuple[bool, Any]] = {}

    @functools.wraps(fn)
    def wrapper(p: Probe) -> Any:
        if id(p) not in done:
            try:
                done[id(p)] = (True, fn(p))
            except Exception as err:  # noqa: BLE001 - re-raised for every case that needs it
                done[id(p)] = (False, err)
        ok, value = done[id(p)]
        if not ok:
            raise value
        return value

    return wrapper


def case(number: int, title: str):
    """Register a case function (returns its rows; one per sub-case)."""

    def register(fn: Callable[[Probe], list[Row]]):
        CASES[number] = (title, fn)
        return fn

    return register


# ------------------------------------------------------------------ 1. stale checkpoint


@case(1, "stale checkpoint after sims.cosmology.sigma8 0.8 -> 0.95, rebuild model.pt")
def case_01(p: Probe) -> list[Row]:
    row = Row(
        "1",
        CASES[1][0],
        "retrained weights differ from the stale checkpoint's (or the log says it restarted)",
    )
    d = p.copy("c01")
    old = weights(load_torch(d / MODEL))
    run = p.smk(d, [MODEL], {"sims": {"cosmology": {"sigma8": 0.95}}})
    train_log = d / RESULTS / "logs" / "train_prior.log"
    text = train_log.read_text(errors="replace") if train_log.exists() else ""
    reran = "rule train_prior" in run.output
    if run.rc != 0:
        row.observed = f"exit {run.rc}: {main_error(run, d)}"
        return [row]
    new = weights(load_torch(d / MODEL))
    differ = not same_tensors(old, new)
    restarted = re.search(r"afresh|from scratch|restart|start(?:ing)? over|anew", text, re.I)
    resumed = re.search(r"resum\w* .*", text)
    row.handled = differ or bool(restarted)
    row.observed = (
        f"exit 0; train_prior {'reran' if reran else 'did not rerun'}; "
        f"weights {'differ' if differ else 'identical to the stale checkpoint'}"
        + (f"; log: '{shorten(resumed.group(0), 70)}'" if resumed else "")
        + (f"; log: '{shorten(restarted.group(0), 40)}'" if restarted else "")
    )
    return [row]


# ------------------------------------------------------- 2 / 28. sampling killed, resumed


def partial_samples(rundir: Path) -> int:
    """Samples held by a pre-empted posterior's partial file(s), 0 if none is readable."""
    best = 0
    for f in glob.glob(str(rundir / RESULTS / "posterior" / "*partial*")):
        if Path(f).name.startswith("."):
            continue  # a partial file being written
        try:
            with np.load(f, allow_pickle=False) as z:
                if "kappa" in z.files:
                    best = max(best, int(z["kappa"].shape[0]))
                else:
                    best = max(best, max(int(z[k].shape[0]) for k in z.files if z[k].ndim >= 3))
        except (OSError, ValueError, KeyError):
            continue
    return best


@scenario
def sampling_runs(p: Probe) -> dict[str, Any]:
    """An uninterrupted 4-sample posterior, and one killed after 3 samples and resumed with
    the same settings (case 28) and with ``n_samples: 2`` (case 2)."""
    ovr = {"sampling": dict(RESUME_SAMPLING)}
    ref = p.copy("c28u")
    (ref / POSTERIOR).unlink()
    run_ref = p.smk(ref, [POSTERIOR], ovr)
    if run_ref.rc != 0:
        raise ProbeError(f"uninterrupted sampling failed: {main_error(run_ref, ref)}")

    killed = p.copy("c02k")
    (killed / POSTERIOR).unlink()
    p.smk_interrupted(killed, [POSTERIOR], ovr, lambda: partial_samples(killed) >= 3)
    held = partial_samples(killed)
    if (killed / POSTERIOR).exists() or not 0 < held < RESUME_SAMPLING["n_samples"]:
        raise ProbeError(f"the sampling job was not stopped mid-way ({held} samples kept)")

    same = p.workdir / "c28r"
    lower = p.workdir / "c02r"
    for dst in (same, lower):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(killed, dst, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    run_same = p.smk(same, [POSTERIOR], ovr)
    run_lower = p.smk(lower, [POSTERIOR], {"sampling": {**RESUME_SAMPLING, "n_samples": 2}})
    return {
        "ref": ref,
        "held": held,
        "same": same,
        "run_same": run_same,
        "lower": lower,
        "run_lower": run_lower,
    }


@case(2, "sample_patch killed after 3 of 4 samples, rerun with sampling.n_samples: 2")
def case_02(p: Probe) -> list[Row]:
    row = Row("2", CASES[2][0], "product holds exactly NSAMPLE = 2 samples; MEAN is their mean")
    s = sampling_runs(p)
    run, d = s["run_lower"], s["lower"]
    if run.rc != 0:
        row.observed = f"rerun failed, exit {run.rc}: {main_error(run, d)}"
        return [row]
    nsample = read_header(d / POSTERIOR).get("NSAMPLE")
    hdus = read_hdus(d / POSTERIOR)
    samples = hdus.get("SAMPLES")
    if samples is None:
        row.observed = f"NSAMPLE = {nsample}; no SAMPLES HDU to check"
        return [row]
    mean_ok = np.allclose(
        hdus["MEAN"], samples.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-8
    )
    n_chi2 = hdus["CHI2"].shape[0] if "CHI2" in hdus else None
    row.handled = nsample == 2 and samples.shape[0] == 2 and mean_ok and n_chi2 in (None, 2)
    row.observed = (
        f"partial held {s['held']}; product NSAMPLE = {nsample}, SAMPLES {samples.shape[0]}, "
        f"CHI2 rows {n_chi2}; MEAN {'is' if mean_ok else 'is not'} the mean of SAMPLES"
    )
    return [row]


@case(28, "sample_patch killed between batches and resumed (same settings)")
def case_28(p: Probe) -> list[Row]:
    row = Row("28", CASES[28][0], "MEAN, STD, SAMPLES, CHI2 bit-identical to an uninterrupted run")
    s = sampling_runs(p)
    run, d = s["run_same"], s["same"]
    if run.rc != 0:
        row.observed = f"resume failed, exit {run.rc}: {main_error(run, d)}"
        return [row]
    a, b = read_hdus(s["ref"] / POSTERIOR), read_hdus(d / POSTERIOR)
    names = [n for n in ("MEAN", "STD", "SAMPLES", "CHI2") if n in a]
    equal = [n for n in names if n in b and a[n].shape == b[n].shape and np.array_equal(a[n], b[n])]
    log = d / RESULTS / "logs" / "sample_patch" / "patch_0000.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    resumed = bool(re.search(r"resum", text, re.I))
    row.handled = equal == names and resumed
    row.observed = (
        f"killed with {s['held']} of {RESUME_SAMPLING['n_samples']} samples; "
        f"{'resumed' if resumed else 'no resume logged'}; identical: {', '.join(equal) or 'none'}"
        + (f"; differ: {', '.join(sorted(set(names) - set(equal)))}" if equal != names else "")
    )
    return [row]


# ------------------------------------------------- 3. no galaxy in any configured patch


def _case03_variant(p: Probe, name: str, label: str, rows: np.ndarray, **fits_cfg: Any) -> Row:
    row = Row(
        f"3{name}",
        f"catalogue with no galaxy in any patch: {label}",
        "pixelise (or the run) fails naming the patch; no posterior or KS map written",
    )
    d = p.copy(f"c03{name}")
    for f in (DATA, KS, POSTERIOR):
        (d / f).unlink()
    cat = write_catalogue(d / "probe_catalogue.fits", rows)
    run = p.smk(d, [DATA, KS, POSTERIOR], fits_source(cat, **fits_cfg))
    wrote = [Path(f).parts[1] for f in (KS, POSTERIOR) if (d / f).exists()]
    if run.rc == 0:
        h = read_header(d / DATA) if (d / DATA).exists() else {}
        row.observed = (
            f"exit 0; NUSED = {h.get('NUSED')}, observed pixels "
            f"{int(read_hdus(d / DATA)['MASK'].sum()) if (d / DATA).exists() else '?'}; "
            f"written: {', '.join(wrote) or 'nothing'}"
        )
        return row
    text = error_text(run, d)
    named = bool(re.search(r"patch[ _#]?0*0\b|patch_0000", text))
    row.handled = named and not wrote
    accepted = ""
    if (d / DATA).exists() and "pixelise" not in failed_rules(run):
        h = read_header(d / DATA)
        accepted = f"pixelise exit 0 (NUSED = {h.get('NUSED')}), then "
    row.observed = f"{accepted}exit {run.rc}: {main_error(run, d)}" + (
        f"; written before it: {', '.join(wrote)}" if wrote else ""
    )
    return row


@case(3, "catalogue that puts no galaxy into any patch")
def case_03(p: Probe) -> list[Row]:
    rows = read_catalogue(p.base)
    outside = rows.copy()
    outside["dec"] = -outside["dec"]  # mirrored to the north: no DES patch holds a galaxy
    return [
        _case03_variant(p, "a", "all galaxies outside the footprint (Dec mirrored)", outside),
        _case03_variant(p, "b", "degrees declared radec_units: rad", rows, radec_units="rad"),
    ]


# --------------------------------------------------------------- 4. one flipped bit


@case(4, "one flipped bit in an observed G1 pixel of a data patch, then sample_patch")
def case_04(p: Probe) -> list[Row]:
    from astropy.io import fits

    row = Row(
        "4",
        CASES[4][0],
        "the read fails naming the file and HDU G1 (before any sample is drawn)",
    )
    d = p.copy("c04")
    path = d / DATA
    with fits.open(path, memmap=False) as hdul:
        mask = np.asarray(hdul["MASK"].data)
        g1 = np.asarray(hdul["G1"].data)
        index = list(hdul).index(hdul["G1"])
        offset = hdul.fileinfo(index)["datLoc"]
    flat = int(np.flatnonzero(mask.ravel() > 0)[0])
    itemsize = g1.dtype.itemsize
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset + flat * itemsize)
        byte = f.read(1)[0]
        f.seek(offset + flat * itemsize)
        f.write(bytes([byte ^ 0x40]))  # an exponent bit of the big-endian float
    set_mtime_like(path, st)
    with fits.open(path, memmap=False) as hdul:
        value = float(np.asarray(hdul["G1"].data).ravel()[flat])
    run = p.smk(d, [POSTERIOR], flags=["--forcerun", "sample_patch"])
    desc = f"G1[{flat}] {float(g1.ravel()[flat]):.3g} -> {value:.3g}"
    if run.rc == 0:
        row.observed = f"{desc}; exit 0, posterior written"
        return [row]
    text = error_text(run, d)
    log = d / RESULTS / "logs" / "sample_patch" / "patch_0000.log"
    log_text = log.read_text(errors="replace") if log.exists() else ""
    sampled = bool(re.search(r"samples \d+-\d+", log_text))
    row.handled = Path(DATA).name in text and "G1" in text and not sampled
    row.observed = (
        f"{desc}; exit {run.rc}{' after sampling' if sampled else ''}: {main_error(run, d)}"
    )
    return [row]


# --------------------------------------------------------------- 5. truncated files


def _truncated(
    p: Probe, name: str, label: str, rel: str, size: Callable[[int], int], target: str, rule: str
) -> Row:
    row = Row(f"5{name}", f"truncated {label}", "the error names the file")
    d = p.copy(f"c05{name}")
    path = d / rel
    full = path.stat().st_size
    truncate(path, size(full))
    run = p.smk(d, [target], flags=["--forcerun", rule])
    if run.rc == 0:
        row.observed = f"{full} -> {path.stat().st_size} B; exit 0, {rule} accepted it"
        return row
    text = error_text(run, d)
    row.handled = path.name in text
    row.observed = f"{full} -> {path.stat().st_size} B; {main_error(run, d)}"
    return row


@case(5, "truncated products and inputs")
def case_05(p: Probe) -> list[Row]:
    return [
        _truncated(
            p,
            "a",
            "data patch (1000 B), read by baseline_ks",
            DATA,
            lambda n: 1000,
            KS,
            "baseline_ks",
        ),
        _truncated(
            p, "b", "data patch (0 B), read by baseline_ks", DATA, lambda n: 0, KS, "baseline_ks"
        ),
        _truncated(
            p,
            "c",
            "cut-out .npy (half), read by train_prior",
            CUTOUTS,
            lambda n: n // 2,
            MODEL,
            "train_prior",
        ),
        _truncated(
            p,
            "d",
            "layout footprint.fits (2/3), read by pixelise",
            LAYOUT,
            lambda n: 2 * n // 3,
            DATA,
            "pixelise",
        ),
        _truncated(
            p,
            "e",
            "mock sky kappa.fits (half), read by pixelise",
            MOCK_KAPPA,
            lambda n: n // 2,
            DATA,
            "pixelise",
        ),
        _truncated(
            p,
            "f",
            "metacal .h5 (half), read by pixelise",
            METACAL,
            lambda n: n // 2,
            DATA,
            "pixelise",
        ),
    ]


# --------------------------------------------------------- bad configurations (dry runs)


def _dry_run_case(p: Probe, number: int, overrides: Mapping[str, Any], key: str, shown: str) -> Row:
    """A configuration is rejected before any job, naming ``key`` (a regex)."""
    row = Row(str(number), CASES[number][0], f"dry run rejects it before any job, naming {shown}")
    d = p.empty(f"c{number:02d}")
    run = p.smk(d, [], overrides, flags=["-n"])
    ran = (d / RESULTS).exists()
    if run.rc == 0:
        row.observed = "dry run accepted it (exit 0)"
        return row
    named = bool(re.search(key, run.output))
    row.handled = named and not ran
    row.observed = (
        f"exit {run.rc}, {len(run.output.splitlines())} lines, key "
        f"{'named' if named else 'not named'}: {_config_error_line(run.output)}"
    )
    return row


def _config_error_line(output: str) -> str:
    """The message of a rejected configuration (not where Snakemake caught it)."""
    skip = re.compile(r'^(\w+ in file .*line \d+:$|Error validating config file|File "|Traceback)')
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if not skip.match(line):
            return shorten(line, 120)
    return shorten(lines[-1] if lines else "", 120)


@case(6, "layout.npix: 16.0 (a float where an integer belongs)")
def case_06(p: Probe) -> list[Row]:
    return [_dry_run_case(p, 6, {"layout": {"npix": 16.0}}, r"layout\W+npix", "layout.npix")]


@case(10, "unknown config key sampling.nsamples")
def case_10(p: Probe) -> list[Row]:
    row = Row(
        "10",
        CASES[10][0],
        "rejected with < 40 lines of output that name the key",
    )
    d = p.empty("c10")
    run = p.smk(d, [], {"sampling": {"nsamples": 4}}, flags=["-n"])
    n = len(run.output.splitlines())
    named = "nsamples" in run.output
    row.handled = run.rc != 0 and n < 40 and named
    row.observed = (
        f"exit {run.rc}, {n} lines of output, key {'named' if named else 'not named'}"
        + (", closest valid key suggested" if "n_samples" in run.output and n < 40 else "")
    )
    return [row]


@case(14, "sims.nside: 100 (not a power of 2)")
def case_14(p: Probe) -> list[Row]:
    return [_dry_run_case(p, 14, {"sims": {"nside": 100}}, r"sims\W+nside", "sims.nside")]


@case(15, "sims.train_sims: [0, 1] includes the mock sky sims.mock_sim = 1")
def case_15(p: Probe) -> list[Row]:
    return [_dry_run_case(p, 15, {"sims": {"train_sims": [0, 1]}}, r"mock_sim", "sims.mock_sim")]


@case(16, "layout.npix: 20 disagrees with patch_size_deg / pixel_scale_arcmin")
def case_16(p: Probe) -> list[Row]:
    return [
        _dry_run_case(p, 16, {"layout": {"npix": 20}}, r"patch_size_deg", "layout.patch_size_deg")
    ]


@case(17, "sampling.n_samples: 0")
def case_17(p: Probe) -> list[Row]:
    key, shown = r"sampling\W+n_samples", "sampling.n_samples"
    return [_dry_run_case(p, 17, {"sampling": {"n_samples": 0}}, key, shown)]


@case(18, "catalogue.e_max: 1.5 (above 1)")
def case_18(p: Probe) -> list[Row]:
    key, shown = r"catalogue\W+e_max", "catalogue.e_max"
    return [_dry_run_case(p, 18, {"catalogue": {"e_max": 1.5}}, key, shown)]


@case(19, "prior.train_steps: 'ten' (a string)")
def case_19(p: Probe) -> list[Row]:
    key, shown = r"prior\W+train_steps", "prior.train_steps"
    return [_dry_run_case(p, 19, {"prior": {"train_steps": "ten"}}, key, shown)]


@case(20, "validation.search_patches: [3], not among validation.patches [0]")
def case_20(p: Probe) -> list[Row]:
    return [
        _dry_run_case(
            p, 20, {"validation": {"search_patches": [3]}}, r"search_patches", "search_patches"
        )
    ]


@case(32, "sampling.patches: [9999], beyond the footprint layout")
def case_32(p: Probe) -> list[Row]:
    key, shown = r"sampling\.patches", "sampling.patches"
    return [_dry_run_case(p, 32, {"sampling": {"patches": [9999]}}, key, shown)]


# ------------------------------------------------------- FITS catalogues with bad rows


def _pixelise_fits(p: Probe, name: str, rows: np.ndarray, **fits_cfg: Any) -> tuple[Path, Run]:
    """Pixelise the table ``rows`` as a FITS catalogue in a copy of the baseline."""
    d = p.copy(name)
    (d / DATA).unlink()
    cat = write_catalogue(d / "probe_catalogue.fits", rows)
    return d, p.smk(d, [DATA], fits_source(cat, **fits_cfg))


@case(7, "5 rows with bin 7 spread over the chunks (2 in the first chunk of 5000)")
def case_07(p: Probe) -> list[Row]:
    row = Row("7", CASES[7][0], "error counts all 5 rows (or says 'at least')")
    rows = read_catalogue(p.base)
    rows["bin"][[0, 1, 6000, 11000, len(rows) - 1]] = 7
    d, run = _pixelise_fits(p, "c07", rows)
    if run.rc == 0:
        row.observed = "exit 0: bin 7 accepted"
        return [row]
    line = main_error(run, d)
    text = " ".join(t for t in error_text(run, d).split() if "/" not in t)
    row.handled = bool(re.search(r"(?<![\w.\-])5(?![\w.])|at least", text))
    row.observed = f"exit {run.rc}: {line}"
    return [row]


@case(8, "float bin column with three rows of 2.7")
def case_08(p: Probe) -> list[Row]:
    row = Row("8", CASES[8][0], "pixelise fails: a non-integer bin is an error naming the column")
    base = read_catalogue(p.base)
    dtype = [(n, "f8" if n == "bin" else base.dtype[n]) for n in base.dtype.names]
    rows = base.astype(dtype)
    rows["bin"][[100, 200, 300]] = 2.7
    d, run = _pixelise_fits(p, "c08", rows)
    if run.rc == 0:
        h = read_header(d / DATA)
        row.observed = (
            f"exit 0: rows used (NUSED = {h.get('NUSED')} of NREAD = {h.get('NREAD')}, "
            f"REJBIN = {h.get('REJBIN')}), 2.7 read as bin 2"
        )
        return [row]
    text = error_text(run, d)
    row.handled = "bin" in text
    row.observed = f"exit {run.rc}: {main_error(run, d)}"
    return [row]


@case(9, "100 duplicated rows (same ra, dec, e1, e2)")
def case_09(p: Probe) -> list[Row]:
    row = Row(
        "9",
        CASES[9][0],
        "duplicates used counted (a log warning or a DUP card in every data patch) or rejected",
    )
    base = read_catalogue(p.base)
    rows = np.concatenate([base, base[:100]])
    # the duplicates a pixelisation uses: a copy of a row the quality cuts reject (the
    # mock holds galaxies with |e| >= 1) is not used twice, so it is not counted
    copies = base[:100]
    passing = (np.hypot(copies["e1"], copies["e2"]) < 1.0) & (copies["bin"] >= 0)
    passing &= copies["weight"] > 0
    n_dup = int(passing.sum())
    d, run = _pixelise_fits(p, "c09", rows)
    if run.rc != 0:
        text = error_text(run, d)
        row.handled = bool(re.search(r"duplicat", text, re.I))
        row.observed = f"{n_dup} duplicates; exit {run.rc}: {main_error(run, d)}"
        return [row]
    cards = {}
    for f in data_products(d):
        h = read_header(f)
        cards[f.name] = {k: h[k] for k in h if "DUP" in k.upper()}
    counted = bool(cards) and all(n_dup in c.values() for c in cards.values())
    log = d / RESULTS / "logs" / "pixelise.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    warned = [
        line
        for line in text.splitlines()
        if re.search(r"duplicat", line, re.I) and re.search(rf"\b{n_dup}\b", line)
    ]
    row.handled = counted or bool(warned)
    row.observed = (
        f"{n_dup} duplicates; exit 0; DUP cards {list(cards.values())[0] if cards else 'none'}; "
        f"log {'warns: ' + shorten(warned[0], 60) if warned else 'silent'}"
    )
    return [row]


@scenario
def bad_row_runs(p: Probe) -> dict[str, Any]:
    """Two FITS catalogues with injected bad rows, pixelised: A (NaN, bin -1, weight <= 0)
    and B (inf, |e| > 1)."""
    base = read_catalogue(p.base)
    a = base.copy()
    a["e1"][0:3] = np.nan
    a["bin"][20:25] = -1
    a["weight"][40:43] = 0.0
    a["weight"][43:46] = -0.5
    b = base.copy()
    b["e2"][0:4] = np.inf
    b["e1"][20:27] = 1.5
    out = {}
    for name, rows in (("A", a), ("B", b)):
        d, run = _pixelise_fits(p, f"c21{name.lower()}", rows)
        out[name] = (d, run, rows, rejection_counts(rows))
    return out


def _bad_rows_case(p: Probe, number: int, which: str, card: str, injected: int) -> list[Row]:
    row = Row(
        str(number),
        CASES[number][0],
        f"{card} = expected count and NREAD = NUSED + sum(REJ*) in every data patch",
    )
    d, run, rows, expected = bad_row_runs(p)[which]
    if run.rc != 0:
        row.observed = f"pixelise failed, exit {run.rc}: {main_error(run, d)}"
        return [row]
    products = data_products(d)
    problems = []
    for f in products:
        h = read_header(f)
        rejected = sum(int(h[k]) for k in h if k.startswith("REJ"))
        if h.get("NREAD") != len(rows):
            problems.append(f"{f.name} NREAD {h.get('NREAD')} != {len(rows)} rows")
        if h.get("NREAD") != h.get("NUSED", -1) + rejected:
            problems.append(f"{f.name} does not reconcile")
        if h.get(card) != expected[card]:
            problems.append(f"{f.name} {card} = {h.get(card)}, expected {expected[card]}")
    row.handled = bool(products) and not problems
    row.observed = f"{injected} injected, {expected[card]} expected; " + (
        "; ".join(problems)
        if problems
        else f"{card} = {expected[card]} and reconciled in {len(products)} data patch(es)"
    )
    return [row]


#: Bad-row cases: number, title, the bad-row run it reads (A or B), card, rows injected.
BAD_ROW_CASES = (
    (21, "3 rows with e1 = NaN (FITS catalogue)", "A", "REJNAN", 3),
    (22, "4 rows with e2 = inf (FITS catalogue)", "B", "REJNAN", 4),
    (23, "5 rows with bin = -1 (FITS catalogue)", "A", "REJBIN", 5),
    (24, "6 rows with weight 0 or -0.5 (FITS catalogue)", "A", "REJWGT", 6),
    (25, "7 rows with e1 = 1.5, |e| > 1 (FITS catalogue)", "B", "REJELL", 7),
)
for _n, _title, _which, _card, _injected in BAD_ROW_CASES:
    case(_n, _title)(
        functools.partial(_bad_rows_case, number=_n, which=_which, card=_card, injected=_injected)
    )


@case(26, "RA/Dec in radians, declared degrees (the default)")
def case_26(p: Probe) -> list[Row]:
    row = Row("26", CASES[26][0], "pixelise fails, saying the positions look like radians")
    rows = read_catalogue(p.base)
    rows["ra"] = np.radians(rows["ra"])
    rows["dec"] = np.radians(rows["dec"])
    d, run = _pixelise_fits(p, "c26", rows)
    if run.rc == 0:
        row.observed = "exit 0: radians accepted as degrees"
        return [row]
    row.handled = bool(re.search(r"radian", error_text(run, d), re.I))
    row.observed = f"exit {run.rc}: {main_error(run, d)}"
    return [row]


# ------------------------------------------------ 13 / 31. an expected input error's log


@scenario
def missing_column_run(p: Probe) -> tuple[Path, Run]:
    """Pixelise a FITS catalogue whose column map names a column it lacks (e1 -> 'g1')."""
    rows = read_catalogue(p.base)
    columns = {"ra": "ra", "dec": "dec", "e1": "g1", "e2": "e2", "weight": "weight", "bin": "bin"}
    return _pixelise_fits(p, "c13", rows, columns=columns)


@case(13, "an expected input error (missing catalogue column): the job's log")
def case_13(p: Probe) -> list[Row]:
    row = Row(
        "13",
        CASES[13][0],
        "the log's last line is the one-line error; no traceback",
    )
    d, run = missing_column_run(p)
    log = d / RESULTS / "logs" / "pixelise.log"
    if run.rc == 0 or not log.exists():
        row.observed = f"exit {run.rc}; log {'present' if log.exists() else 'missing'}"
        return [row]
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    traceback_lines = sum(1 for line in lines if line.startswith("Traceback"))
    row.handled = "g1" in last and traceback_lines == 0
    row.observed = (
        f"{len(lines)} log lines, {'a traceback' if traceback_lines else 'no traceback'}; "
        f"last: '{shorten(last, 90)}'"
    )
    return [row]


@case(31, "catalogue.fits.columns.e1 names a column the table lacks")
def case_31(p: Probe) -> list[Row]:
    row = Row("31", CASES[31][0], "pixelise fails naming the file and the missing column 'g1'")
    d, run = missing_column_run(p)
    if run.rc == 0:
        row.observed = "exit 0"
        return [row]
    text = error_text(run, d)
    row.handled = "g1" in text and "probe_catalogue.fits" in text
    row.observed = f"exit {run.rc}: {main_error(run, d)}"
    return [row]


# ------------------------------------------------------- 11 / 27. training killed, resumed


def checkpoint_step(path: Path) -> int | None:
    try:
        return int(load_torch(path)["step"])
    except Exception:  # noqa: BLE001 - a checkpoint being replaced, or another format
        return None


@scenario
def training_runs(p: Probe) -> dict[str, Any]:
    """The prior trained uninterrupted and killed after its first checkpoint then resumed,
    each followed by the posterior of patch 0 (for its MODHASH)."""
    ovr = {"prior": dict(RESUME_PRIOR), "sampling": {"tuned_scaling": False}}
    dirs = {}
    for name in ("c11u", "c11k"):
        d = p.copy(name)
        for f in (d / RESULTS / "prior").iterdir():
            f.unlink()
        (d / POSTERIOR).unlink()
        dirs[name] = d
    ref, killed = dirs["c11u"], dirs["c11k"]
    run_ref = p.smk(ref, [POSTERIOR], ovr)
    if run_ref.rc != 0:
        raise ProbeError(f"uninterrupted training failed: {main_error(run_ref, ref)}")
    p.smk_interrupted(killed, [MODEL], ovr, lambda: (killed / CHECKPOINT).exists())
    step = checkpoint_step(killed / CHECKPOINT)
    if (killed / MODEL).exists() or step is None or step >= RESUME_PRIOR["train_steps"]:
        raise ProbeError(f"the training job was not stopped mid-way (checkpoint step {step})")
    run_resumed = p.smk(killed, [POSTERIOR], ovr)
    log = killed / RESULTS / "logs" / "train_prior.log"
    return {
        "ref": ref,
        "killed": killed,
        "step": step,
        "run": run_resumed,
        "log": log.read_text(errors="replace") if log.exists() else "",
    }


@case(27, "train_prior killed after its first checkpoint and resumed")
def case_27(p: Probe) -> list[Row]:
    row = Row(
        "27",
        CASES[27][0],
        "resumes, and the model's EMA and raw weights equal an uninterrupted run's",
    )
    t = training_runs(p)
    if t["run"].rc != 0:
        row.observed = f"resume failed, exit {t['run'].rc}: {main_error(t['run'], t['killed'])}"
        return [row]
    a, b = load_torch(t["ref"] / MODEL), load_torch(t["killed"] / MODEL)
    ema = same_tensors(weights(a, "ema"), weights(b, "ema"))
    raw = same_tensors(weights(a, "model"), weights(b, "model"))
    resumed = re.search(r"(resum|continu)\w*[^\n]*", t["log"], re.I)
    row.handled = ema and raw and bool(resumed)
    row.observed = (
        f"killed at checkpoint step {t['step']}; "
        + (f"log: '{shorten(resumed.group(0), 60)}'" if resumed else "no resume logged")
        + f"; EMA {'equal' if ema else 'differ'}, raw {'equal' if raw else 'differ'}"
    )
    return [row]


@case(11, "MODHASH of a resumed and of an uninterrupted training (identical tensors)")
def case_11(p: Probe) -> list[Row]:
    row = Row("11", CASES[11][0], "equal MODHASH in the posterior products")
    t = training_runs(p)
    if t["run"].rc != 0:
        row.observed = f"resume failed, exit {t['run'].rc}: {main_error(t['run'], t['killed'])}"
        return [row]
    a, b = load_torch(t["ref"] / MODEL), load_torch(t["killed"] / MODEL)
    same = same_tensors(weights(a, "ema"), weights(b, "ema"))
    ha = read_header(t["ref"] / POSTERIOR).get("MODHASH")
    hb = read_header(t["killed"] / POSTERIOR).get("MODHASH")
    row.handled = same and ha is not None and ha == hb
    row.observed = f"EMA tensors {'identical' if same else 'differ'}; MODHASH {ha} vs {hb}"
    return [row]


# --------------------------------------------------------------- 12. README troubleshooting


@case(12, "README troubleshooting of the --configfile pitfall")
def case_12(p: Probe) -> list[Row]:
    row = Row(
        "12",
        CASES[12][0],
        "a Troubleshooting section shows that targets go before --configfile a b",
    )
    text = (p.repo / "README.md").read_text()
    m = re.search(r"^(#+)\s*[^\n]*troubleshoot[^\n]*$", text, re.I | re.M)
    if not m:
        row.observed = "no troubleshooting section in README.md"
        return [row]
    level = len(m.group(1))
    rest = text[m.end() :]
    end = re.search(rf"^#{{1,{level}}}\s", rest, re.M)
    section = rest[: end.start()] if end else rest
    has_flag = "--configfile" in section
    has_order = bool(re.search(r"target", section, re.I))
    row.handled = has_flag and has_order
    row.observed = (
        f"section '{shorten(m.group(0), 50)}': --configfile {'shown' if has_flag else 'absent'}, "
        f"target order {'explained' if has_order else 'not explained'}"
    )
    return [row]


# --------------------------------------------------------------- 29. single-patch rebuild


@case(29, "rebuild one posterior patch by naming its file (-f)")
def case_29(p: Probe) -> list[Row]:
    row = Row("29", CASES[29][0], "every HDU's data bit-identical to the baseline's")
    d = p.copy("c29")
    before = read_header(d / POSTERIOR).get("DATE")
    run = p.smk(d, [POSTERIOR], flags=["-f"])
    if run.rc != 0:
        row.observed = f"exit {run.rc}: {main_error(run, d)}"
        return [row]
    a, b = read_hdus(p.base / POSTERIOR), read_hdus(d / POSTERIOR)
    same = [n for n in a if n in b and a[n].shape == b[n].shape and np.array_equal(a[n], b[n])]
    rebuilt = "rule sample_patch" in run.output
    row.handled = rebuilt and same == list(a) and a.keys() == b.keys()
    row.observed = (
        f"{'rebuilt' if rebuilt else 'not rebuilt'} (DATE {before} -> "
        f"{read_header(d / POSTERIOR).get('DATE')}); identical: {', '.join(same)}"
    )
    return [row]


# --------------------------------------------------------------- 30. no pickle


PICKLE_USE = re.compile(
    r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b|allow_pickle\s*=\s*True|"
    r"weights_only\s*=\s*False|pickle\.loads?\(",
    re.M,
)


@case(30, "no pickle anywhere (checkpoints, partial files, code)")
def case_30(p: Probe) -> list[Row]:
    row = Row(
        "30",
        CASES[30][0],
        "checkpoints load with weights_only=True; no pickle loading in src/, scripts/, workflow/",
    )
    loaded = []
    for rel in (MODEL, CHECKPOINT):
        path = p.base / rel
        if path.exists():
            load_torch(path)
            loaded.append(path.name)
    hits = []
    for sub in ("src", "scripts", "workflow"):
        for f in sorted((p.repo / sub).rglob("*")):
            if f.suffix in (".py", ".smk") or f.name == "Snakefile":
                for m in PICKLE_USE.finditer(f.read_text(errors="replace")):
                    hits.append(f"{f.relative_to(p.repo)}: {m.group(0).strip()}")
    row.handled = bool(loaded) and not hits
    row.observed = f"weights_only load of {', '.join(loaded)} ok; " + (
        f"pickle use: {'; '.join(hits[:3])}" if hits else "no pickle use in the code"
    )
    return [row]


# --------------------------------------------------------------- driver


def run_cases(p: Probe, numbers: Iterable[int]) -> list[Row]:
    """Run the selected cases; an unforeseen error becomes a NOT-handled row."""
    rows: list[Row] = []
    for n in numbers:
        title, fn = CASES[n]
        t0 = time.perf_counter()
        print(f"[case {n:2d}] {title}", file=sys.stderr, flush=True)
        try:
            got = fn(p)
        except Exception as err:  # noqa: BLE001 - reported, the probe goes on
            if p.verbose:
                traceback.print_exc()
            msg = first_line(f"{type(err).__name__}: {err}")
            got = [
                Row(
                    str(n),
                    title,
                    "see the case's criterion",
                    "(case could not complete)",
                    error=msg,
                )
            ]
        for r in got:
            print(f"          {r.case:>3}: {r.verdict} | {r.observed}", file=sys.stderr)
        print(f"          {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows.extend(got)
    return rows


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Row]) -> str:
    lines = ["| case | expected | observed | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {cell(r.case)} {cell(r.title)} | {cell(r.expected)} | {cell(r.observed)} | "
            f"{cell(r.verdict)} |"
        )
    return "\n".join(lines)


def case_verdicts(rows: Sequence[Row]) -> dict[int, bool]:
    """Per case number: handled only if every sub-case is."""
    out: dict[int, bool] = {}
    for r in rows:
        n = int(re.match(r"\d+", r.case).group(0))
        out[n] = out.get(n, True) and r.handled and not r.error
    return out


def git_describe(repo: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"


def report(rows: Sequence[Row], repo: Path, seconds: float, baseline: float | None) -> str:
    verdicts = case_verdicts(rows)
    handled = sorted(n for n, ok in verdicts.items() if ok)
    not_handled = sorted(n for n, ok in verdicts.items() if not ok)
    head = [
        "# Fault probe (issue 22)",
        "",
        f"- code: `{repo}` at {git_describe(repo)}",
        f"- run: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, wall time {seconds / 60:.1f} min"
        + (" (baseline reused)" if baseline is None else f" (baseline {baseline / 60:.1f} min)"),
        f"- cases: {len(verdicts)}; handled {len(handled)}; NOT handled {len(not_handled)}"
        + (f" ({', '.join(map(str, not_handled))})" if not_handled else ""),
        "",
    ]
    return "\n".join(head) + "\n" + table(rows) + "\n"


def parse_cases(text: str | None) -> list[int]:
    if not text:
        return sorted(CASES)
    numbers = sorted({int(t) for t in re.split(r"[,\s]+", text.strip()) if t})
    unknown = [n for n in numbers if n not in CASES]
    if unknown:
        raise SystemExit(f"--cases: no case {unknown} (cases are 1-32)")
    return numbers


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True, help="folder of the runs (created)")
    ap.add_argument("--out", type=Path, required=True, help="markdown table written here")
    ap.add_argument("--repo", type=Path, default=root, help="checkout to probe (default: this one)")
    ap.add_argument("--cases", help="comma-separated case numbers (default: all 32)")
    ap.add_argument(
        "--reuse-baseline",
        action="store_true",
        help="keep workdir/base from an earlier probe of the same code (debugging)",
    )
    ap.add_argument("--clean", action="store_true", help="remove the cases' run folders at the end")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a Snakemake call may take")
    ap.add_argument("-v", "--verbose", action="store_true", help="print commands and tracebacks")
    args = ap.parse_args(argv)

    repo = args.repo.resolve()
    numbers = parse_cases(args.cases)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # the probe's own reads (headers, checkpoints) use the probed checkout's package too
    sys.path.insert(0, str(repo / "src"))
    p = Probe(repo, workdir, args.timeout, args.verbose)
    t0 = time.perf_counter()
    print(f"probing {repo} ({git_describe(repo)}) in {workdir}", file=sys.stderr)
    baseline_s = None
    try:
        run = p.build_baseline(args.reuse_baseline)
    except Exception as err:  # noqa: BLE001 - every case is then reported not handled
        msg = first_line(f"baseline: {type(err).__name__}: {err}")
        print(msg, file=sys.stderr)
        rows = [
            Row(str(n), CASES[n][0], "see the case's criterion", "(no baseline)", error=msg)
            for n in numbers
        ]
    else:
        baseline_s = None if run is None else run.seconds
        print(
            f"baseline: {'reused' if run is None else f'{run.seconds:.0f} s'}",
            file=sys.stderr,
            flush=True,
        )
        rows = run_cases(p, numbers)
    text = report(rows, repo, time.perf_counter() - t0, baseline_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if args.clean:
        for d in workdir.glob("c[0-9][0-9]*"):
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
