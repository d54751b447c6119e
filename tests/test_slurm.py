"""The test configuration run end to end on a real Slurm cluster through `--profile slurm`.

Needs a reachable cluster with accounting and at least one (possibly fake) GPU; CI starts a
local single-node one with ci/slurm/up.sh (`make slurm-up`). Without one the tests skip,
unless KAPPADIFF_REQUIRE_SLURM=1 (set by .ci/run), when they fail instead. Only
`test_profile_settings` runs without a cluster.

The module runs the workflow twice in one results folder, on a FITS shear catalogue made
from a simulated sky (`catalogue.source: fits`, as a survey team would run it; the mock
and DES-Y3 sources run locally in test_real_catalogues.py): the whole default target; then,
after deleting one product (the posterior of one patch once `sample_patch` exists), only
that file by naming it, while its first Slurm job is cancelled as an admin or a pre-emption
would, to show that the profile's retries resubmit it and the run completes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import simulated_catalogue
import yaml
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = "config/test.yaml"
PROFILE = ROOT / "slurm" / "config.v9+.yaml"
# Limits after which a hung run fails (hang guards, well above the normal times): the
# whole workflow, and one rebuilt file.
FULL_RUN_TIMEOUT_S = 600
REBUILD_TIMEOUT_S = 240
# The plugin waits this long before its first status query (40 s by default).
FIRST_STATUS_CHECK_S = 2
SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "sacct", "scontrol", "sinfo")


def _slurm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def cluster_problem() -> str | None:
    """Why the Slurm cluster cannot run this test, or None when it can."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        return f"Slurm commands not on PATH: {', '.join(missing)}"
    ping = _slurm("scontrol", "ping")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"no Slurm controller answers `scontrol ping`: {ping.stdout}{ping.stderr}".strip()
    acct = _slurm("sacct", "-X", "-n", "-S", "now-1minutes")
    if acct.returncode != 0:
        return f"sacct fails (no accounting storage?): {acct.stderr.strip()}"
    nodes = _slurm("sinfo", "-h", "-N", "-o", "%T %G").stdout.split("\n")
    usable = [n for n in nodes if n.split(" ")[0] in ("idle", "mixed", "allocated")]
    if not any("gpu" in n for n in usable):
        return f"no usable Slurm node with GPUs (sinfo: {nodes})"
    return None


def test_profile_settings():
    """The profile keeps what the README promises, and its array rules exist (no cluster needed)."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] and profile["slurm-requeue"]
    assert set(profile["default-resources"]) == {"runtime", "mem_mb"}
    # A rule named in slurm-array-jobs that does not exist would silently submit plain jobs.
    rules = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", TEST_CONFIG],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    array_rules = profile["slurm-array-jobs"].split(",")
    assert array_rules and not set(array_rules) - set(rules), (array_rules, rules)


@dataclass
class Run:
    """One Snakemake invocation: its exit status, console output and Slurm run id."""

    returncode: int
    output: str
    run_id: str | None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def configfiles(results: Path) -> list[str]:
    """The test config and the catalogue overlay written beside the results folder."""
    return [TEST_CONFIG, str(results.parent / "catalogue.yaml")]


def snakemake(results: Path, *args: str, timeout_s: int = REBUILD_TIMEOUT_S) -> Run:
    """Run Snakemake from the repository root with `--profile slurm` and the test config.

    `timeout` interrupts a hung run with SIGINT, on which Snakemake cancels its Slurm jobs,
    and kills it 30 s later; the run then fails with exit status 124 or 137.
    """
    cmd = [
        "timeout", "-s", "INT", "-k", "30", str(timeout_s),
        sys.executable, "-m", "snakemake", *args,
        "--profile", "slurm",
        "--slurm-init-seconds-before-status-checks", str(FIRST_STATUS_CHECK_S),
        "--configfile", *configfiles(results),
        "--config", f"results={results}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    match = re.search(r"SLURM run ID: (\S+)", output)
    return Run(proc.returncode, output, match.group(1) if match else None)


def planned_outputs(results: Path, *targets: str) -> dict[Path, str]:
    """Every output file of the DAG of `targets` (default: rule all) -> the rule making it."""
    cmd = [
        sys.executable, "-m", "snakemake", *targets, "--summary", "--cores", "1",
        "--configfile", *configfiles(results), "--config", f"results={results}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"snakemake --summary failed:\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    plan = {}
    for line in lines[header + 1 :]:
        fields = line.split("\t")
        if len(fields) >= 3:
            plan[Path(fields[0])] = fields[2]
    return plan


def planned_jobs(results: Path) -> Counter[str]:
    """Rule -> number of jobs that the default target plans (Snakemake's dry-run job stats)."""
    cmd = [
        sys.executable, "-m", "snakemake", "-n", "--cores", "1",
        "--configfile", *configfiles(results), "--config", f"results={results}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"snakemake -n failed:\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.splitlines()
    start = lines.index("Job stats:") + 3  # past the header and its underline
    jobs = Counter()
    for line in lines[start:]:
        rule, count = line.split()
        if rule == "total":
            break
        jobs[rule] = int(count)
    # the target rule has no action: Snakemake finishes it itself, nothing is submitted
    del jobs["all"]
    return jobs


def slurm_jobs(run_id: str) -> list[tuple[str, str, str]]:
    """(job id, comment, state) of every Slurm job of one Snakemake run, from accounting.

    The plugin names every job of a run after its run id and comments it with the rule
    (`rule_<rule>` or `rule_<rule>_wildcards_<values>`); array tasks are `<array>_<task>`.
    """
    out = _slurm(
        "sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", run_id,
        "-o", "JobID,Comment,State",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [tuple(line.split("|")[:3]) for line in out.stdout.splitlines() if line]


def rule_of(comment: str) -> str:
    return re.sub(r"^rule_|_wildcards_.*$", "", comment)


def assert_product(path: Path) -> None:
    """A product exists and, when FITS, every HDU checks out and its data are finite."""
    assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
    if path.suffix != ".fits":
        return
    with fits.open(path, checksum=True) as hdus:
        for hdu in hdus:
            if "CHECKSUM" in hdu.header:
                assert hdu.verify_checksum() == 1, f"{path}[{hdu.name}]: bad CHECKSUM"
            if hdu.data is not None and hdu.is_image:
                assert np.isfinite(hdu.data).all(), f"{path}[{hdu.name}]: non-finite values"


class CancelFirstJob(threading.Thread):
    """Cancel the first Slurm job of `rule` that shows up in the queue, as an admin would.

    The job then ends CANCELLED, which the executor reports as a failure; the profile's
    `retries` must resubmit it. Polls squeue every 0.2 s; a job lives in the queue for at
    least the seconds Snakemake needs to start inside it, so it cannot slip through.
    """

    def __init__(self, rule: str) -> None:
        super().__init__(daemon=True)
        self.rule = rule
        self.cancelled: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        pattern = re.compile(rf"rule_{re.escape(self.rule)}(_wildcards_.*)?")
        while not self.stop.is_set():
            queue = _slurm("squeue", "-h", "-o", "%i|%k|%T").stdout.splitlines()
            for line in queue:
                job_id, comment, state = line.split("|")
                if pattern.fullmatch(comment) and state in ("PENDING", "RUNNING"):
                    _slurm("scancel", job_id)
                    self.cancelled = job_id
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = cluster_problem()
    if problem:
        if os.environ.get("KAPPADIFF_REQUIRE_SLURM") == "1":
            pytest.fail(f"KAPPADIFF_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(f"{problem}; start a local cluster with `make slurm-up`")


@dataclass
class Workflow:
    """The default target of the test config, planned and then run through the profile."""

    results: Path
    files: dict[Path, str]  # every output file of the DAG -> its rule
    jobs: Counter[str]  # rule -> planned jobs
    run: Run


@pytest.fixture(scope="module")
def workflow(cluster, tmp_path_factory) -> Workflow:
    folder = tmp_path_factory.mktemp("slurm")
    results = folder / "results"
    config = yaml.safe_load((ROOT / TEST_CONFIG).read_text())
    catalogue = simulated_catalogue.write_fits(folder / "shear.fits", config)
    overlay = {"catalogue": {"source": "fits", "fits": catalogue}}
    (folder / "catalogue.yaml").write_text(yaml.safe_dump(overlay))
    files = planned_outputs(results)
    jobs = planned_jobs(results)
    return Workflow(results, files, jobs, snakemake(results, timeout_s=FULL_RUN_TIMEOUT_S))


@pytest.fixture
def completed(workflow) -> Workflow:
    """The workflow, for the tests that need its products; fails if the full run failed."""
    assert workflow.run.returncode == 0, "the full run failed: see test_whole_workflow"
    return workflow


@pytest.fixture(scope="module")
def rebuild_target(workflow) -> Path:
    """A posterior patch when the DAG samples patches, else the last product planned."""
    posterior = sorted(p for p, rule in workflow.files.items() if rule == "sample_patch")
    return posterior[0] if posterior else list(workflow.files)[-1]


@pytest.mark.slurm
def test_whole_workflow(workflow):
    run = workflow.run
    assert run.returncode == 0, f"snakemake --profile slurm failed:\n{run.tail()}"
    assert workflow.files, "the test config plans no jobs"
    for path in workflow.files:
        assert_product(path)
    # Every planned job ran as a Slurm job of this run, and each finished on its first try.
    jobs = slurm_jobs(run.run_id)
    assert Counter(rule_of(c) for _, c, _ in jobs) == workflow.jobs, jobs
    assert {state for _, _, state in jobs} == {"COMPLETED"}, jobs


@pytest.mark.slurm
def test_gpu_rules_get_gpus(completed):
    """Rules with a `gpu` resource reach Slurm with a GPU allocation (sbatch --gpus)."""
    gpu_rules = {"train_prior", "sample_patch", "validate_sample", "tarp_references"}
    checked = 0
    for job_id, comment, _ in slurm_jobs(completed.run.run_id):
        if rule_of(comment) in gpu_rules:
            tres = _slurm("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "AllocTRES").stdout
            assert "gres/gpu=" in tres, f"job {job_id} ({comment}) got no GPU: {tres}"
            checked += 1
    if not checked:
        pytest.skip("no GPU rule in the DAG yet")


@pytest.mark.slurm
def test_sampling_runs_as_job_arrays(completed):
    """Rules in the profile's slurm-array-jobs with 2+ jobs went, at least in part, as arrays.

    Jobs of the rule that become ready together share one array; one that becomes ready
    alone later (e.g. validation with the tuned scaling) is a plain job.
    """
    array_rules = [r for r in ("sample_patch", "validate_sample") if completed.jobs[r] >= 2]
    if not array_rules:
        pytest.skip("no array-job rule with two or more jobs in the test DAG")
    for rule in array_rules:
        ids = [j for j, c, _ in slurm_jobs(completed.run.run_id) if rule_of(c) == rule]
        assert len(ids) == completed.jobs[rule], ids
        # array tasks are <array id>_<task>
        arrays = Counter(j.split("_")[0] for j in ids if "_" in j)
        assert arrays and max(arrays.values()) >= 2, f"{rule} not submitted as an array: {ids}"


@pytest.mark.slurm
def test_one_patch_rebuilt_alone_and_retried(completed, rebuild_target):
    """Delete one posterior patch and rebuild only it by naming its file, while its first
    Slurm job is cancelled: the profile's retries resubmit it and the run completes.

    One run shows both, which keeps the module inside its CI time budget.
    """
    rule = completed.files[rebuild_target]
    others = {p: p.stat().st_mtime_ns for p in completed.files if p != rebuild_target}
    rebuild_target.unlink()
    canceller = CancelFirstJob(rule)
    canceller.start()
    try:
        run = snakemake(completed.results, str(rebuild_target))
    finally:
        canceller.stop.set()
        canceller.join()
    assert canceller.cancelled, f"no {rule} job appeared in the queue:\n{run.tail()}"
    assert run.returncode == 0, f"the run did not recover from the cancelled job:\n{run.tail()}"
    assert_product(rebuild_target)
    jobs = slurm_jobs(run.run_id)
    # only the named file's rule ran: its cancelled job and one resubmission
    assert [rule_of(c) for _, c, _ in jobs] == [rule, rule], jobs
    states = {job_id: state for job_id, _, state in jobs}
    assert states.pop(canceller.cancelled).startswith("CANCELLED"), states
    assert list(states.values()) == ["COMPLETED"], f"expected one resubmission: {states}"
    changed = [p for p, mtime in others.items() if p.stat().st_mtime_ns != mtime]
    assert not changed, f"rebuilding one file touched others: {changed}"
