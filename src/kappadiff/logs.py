"""Logging set-up for pipeline steps: everything, progress bars included, goes to a log file.

A job that stops on an exception ends its log with one line, ``kappadiff: error: ...``, the
line to read first. An input error (:class:`kappadiff.errors.KappadiffInputError`: a bad
file, configuration value or column, whose message already names it) is that line alone;
any other exception is a bug, and its traceback comes before the line.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

from .errors import KappadiffInputError

__all__ = ["error_line", "report_uncaught", "setup_logging"]


def error_line(exc: BaseException) -> str:
    """The one-line summary of ``exc`` that ends a failed job's log."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, KappadiffInputError):
        return f"kappadiff: error: {text}"
    return f"kappadiff: error: unexpected {type(exc).__name__}: {text} (traceback above)"


def report_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """:data:`sys.excepthook` of a pipeline step: the traceback of a bug, then one line.

    Interrupts (KeyboardInterrupt, SystemExit) keep Python's own report. Python still exits
    with status 1 after the hook, so Snakemake sees the job fail.
    """
    if not issubclass(exc_type, Exception):
        sys.__excepthook__(exc_type, exc, tb)
        return
    if not isinstance(exc, KappadiffInputError):
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
    print(error_line(exc), file=sys.stderr, flush=True)


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Send stderr (tqdm bars, warnings, tracebacks) and the ``kappadiff`` loggers to a file.

    Called first by every Snakemake script with the rule's ``log:`` file. Also installs
    :func:`report_uncaught` as :data:`sys.excepthook`, so the log ends with one line naming
    what stopped the job.
    """
    if log_path is not None:
        os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
        sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives for the process
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    sys.excepthook = report_uncaught
