"""The end of a failed job's log: one line for an input error, a traceback and a line for a bug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kappadiff.catalogue import CatalogueError
from kappadiff.config import ConfigError
from kappadiff.errors import KappadiffInputError
from kappadiff.footprint import FootprintError
from kappadiff.products import ProductError
from kappadiff.shells import ShellError
from kappadiff.survey import NzError


def run_job(tmp_path, *raise_lines: str) -> tuple[int, list[str]]:
    """Run a script shaped like scripts/*.py (setup_logging first) that raises; (status, log)."""
    log = tmp_path / "logs" / "rule.log"
    script = tmp_path / "job.py"
    lines = [
        "import logging",
        "from kappadiff.logs import setup_logging",
        f"setup_logging({str(log)!r})",
        "logging.getLogger('kappadiff.job').info('working')",
        *raise_lines,
    ]
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert log.exists(), done.stderr
    return done.returncode, log.read_text().splitlines()


@pytest.mark.parametrize(
    "cls", [ProductError, ConfigError, ShellError, NzError, FootprintError, CatalogueError]
)
def test_the_library_input_errors_share_one_base(cls):
    assert issubclass(cls, KappadiffInputError) and issubclass(cls, ValueError)


def test_input_error_ends_the_log_with_one_line_and_no_traceback(tmp_path):
    status, lines = run_job(
        tmp_path,
        "from kappadiff.products import ProductError",
        "raise ProductError('results/data/patch_0003.fits: HDU G1 fails its checksum')",
    )
    assert status != 0
    assert lines[-1] == "kappadiff: error: results/data/patch_0003.fits: HDU G1 fails its checksum"
    assert not any("Traceback" in line for line in lines)
    assert "working" in lines[0]  # the log kept what came before


def test_multiline_input_error_is_still_one_line(tmp_path):
    status, lines = run_job(
        tmp_path,
        "from kappadiff.config import ConfigError",
        "raise ConfigError('key a.b\\n  is wrong')",
    )
    assert status != 0 and lines[-1] == "kappadiff: error: key a.b; is wrong"


@pytest.mark.parametrize(
    "raise_line, name",
    [("raise KeyError('npix')", "KeyError"), ("raise ValueError('x < 0')", "ValueError")],
)
def test_a_bug_keeps_its_traceback_and_ends_with_one_line(tmp_path, raise_line, name):
    # a plain ValueError is not an input error the library names: it may be a bug
    status, lines = run_job(tmp_path, raise_line)
    assert status != 0
    assert any(line.startswith("Traceback") for line in lines)
    assert lines[-1].startswith(f"kappadiff: error: unexpected {name}: ")
    assert lines[-1].endswith("(traceback above)")
