"""Invalid configurations stop the run before any job, naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kappadiff.config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--configfile",
            str(cfg),
            "--config",
            f"results={tmp_path / 'results'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_default_config_dry_run(tmp_path):
    res = _dry_run(tmp_path, _base())
    assert res.returncode == 0, res.stderr
    assert "Job stats" in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c["sims"].__setitem__("nside", -64), "nside"),
        (lambda c: c["sims"].__setitem__("nside", 1000), "nside"),
        (lambda c: c.__setitem__("frobnicate", 1), "frobnicate"),
        (lambda c: c["layout"].__setitem__("wobble", 1), "wobble"),
        (lambda c: c["layout"].__setitem__("npix", 60), "patch_size_deg"),
        (lambda c: c["sims"].__setitem__("train_sims", [0, 1]), "mock_sim"),
        (
            lambda c: c["validation"].__setitem__("search_patches", [24, 7]),
            "validation.search_patches [7]",
        ),
    ],
    ids=[
        "negative-nside",
        "nside-not-pow2",
        "unknown-top-key",
        "unknown-nested-key",
        "patch-size-mismatch",
        "mock-in-training",
        "search-patch-not-validated",
    ],
)
def test_invalid_config_names_key(tmp_path, mutate, key):
    config = _base()
    mutate(config)
    res = _dry_run(tmp_path, config)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert key in out, out[-2000:]
    # nothing ran: no job, no products
    assert not (tmp_path / "results").exists()


def test_check_config_patch_size(tmp_path):
    config = _base()
    config.setdefault("mosaic", {"nside": 1024})
    check_config(config)  # the default is consistent
    bad = copy.deepcopy(config)
    bad["layout"]["pixel_scale_arcmin"] = 1.0
    with pytest.raises(ConfigError, match="layout.patch_size_deg"):
        check_config(bad)
