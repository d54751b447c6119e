"""The common base of the library's errors about its inputs."""

from __future__ import annotations

__all__ = ["KappadiffInputError"]


class KappadiffInputError(ValueError):
    """A file, configuration or value given to kappadiff is unusable; the message says why.

    Every such error names what is wrong (file, key, column, count), so a job that stops
    on one reports its message alone, without a traceback
    (:func:`kappadiff.logs.setup_logging`); any other exception is a bug and keeps its
    traceback.
    """
