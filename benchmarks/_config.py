"""The benchmarks' configuration: a config file with the schema's defaults filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kappadiff.config import validate_config

SCHEMA = Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: str | Path) -> dict[str, Any]:
    """Read ``path`` and validate it against the workflow's schema, filling in its defaults."""
    with open(path) as f:
        config = yaml.safe_load(f)
    validate_config(config, SCHEMA, sources=[(str(path), config)])
    return config
