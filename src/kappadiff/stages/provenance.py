"""The resolved configuration, saved beside the products it made."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from .. import __version__
from ..config import config_hash
from ..products import atomic_output

__all__ = ["write_resolved_config"]


def write_resolved_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the validated configuration (defaults filled in) as YAML, atomically."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(f"# kappadiff {__version__}, config hash {config_hash(config)}\n")
        yaml.safe_dump(dict(config), f, sort_keys=False)
