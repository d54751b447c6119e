"""The conda environment names the same packages as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_envs_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {_name(d) for d in deps}
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        names = set()
        for dep in env["dependencies"]:
            if isinstance(dep, dict):
                names |= {_name(d) for d in dep.get("pip", []) if not d.startswith("-e")}
            else:
                names.add(CONDA_TO_PYPI.get(_name(dep), _name(dep)))
        names -= {"python", "pip"}
        assert names == wanted, (
            f"{env_file.name}: missing {sorted(wanted - names)}, extra {sorted(names - wanted)}"
        )
