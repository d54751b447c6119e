"""Invalid configurations stop the run before any job, naming the key."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kappadiff.config import ConfigError, check_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


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
        # JSON schema counts 16.0 as an integer: it passed, then index_table died
        (lambda c: c["layout"].__setitem__("npix", 64.0), "layout.npix = 64.0"),
        (lambda c: c["layout"].__setitem__("npix", 60), "patch_size_deg"),
        (lambda c: c["sims"].__setitem__("train_sims", [0, 1]), "mock_sim"),
        (
            lambda c: c["validation"].__setitem__("search_patches", [24, 7]),
            "validation.search_patches [7]",
        ),
        (
            lambda c: c["sims"].update(source="cosmogrid", shell_files=["sim0.h5"]),
            "sims.shell_files lists 1 simulations, but sims.n_sims = 2",
        ),
        (lambda c: c["validation"].__setitem__("n_regions", 3), "validation.n_regions"),
    ],
    ids=[
        "negative-nside",
        "nside-not-pow2",
        "unknown-top-key",
        "unknown-nested-key",
        "float-npix",
        "patch-size-mismatch",
        "mock-in-training",
        "search-patch-not-validated",
        "too-few-shell-files",
        "tarp-regions-not-dividing-npix",
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


@pytest.mark.parametrize(
    ("valid", "invalid", "message"),
    [
        (
            {"sims": {"source": "gowerstreet", "shell_files": ["run0", "run1"]}},
            {"sims": {"source": "gowerstreet", "shell_files": ["run0"]}},
            "sims.shell_files lists 1 simulations, but sims.n_sims = 2 with "
            "sims.source = gowerstreet",
        ),
        (
            # 8 regions of 4 px tile the 64 px patch; 3 regions of 2 px do not
            {"validation": {"n_regions": 8, "block": 4}},
            {"validation": {"n_regions": 3, "block": 2}},
            "validation.n_regions x validation.block = 3 x 2 does not divide layout.npix = 64",
        ),
    ],
    ids=["shell-files-per-sim", "tarp-regions-tile-patch"],
)
def test_check_config_cross_keys(valid, invalid, message):
    config = _base()
    validate_config(config, SCHEMA)

    def overlaid(overlay: dict) -> dict:
        changed = copy.deepcopy(config)
        for section, values in overlay.items():
            changed[section].update(values)
        return changed

    check_config(overlaid(valid))
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(overlaid(invalid))


def test_unknown_key_is_one_short_message(tmp_path):
    # it printed the whole schema and config: 2,553 lines for a top-level key
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("layout:\n  npixx: 16\nfrobnicate: 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/test.yaml"]
        + [str(overlay), "--config", f"results={tmp_path / 'results'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert len(out.splitlines()) < 30, out[-3000:]
    assert f"unknown key 'layout.npixx' (in {overlay}): did you mean 'layout.npix'?" in out
    assert f"unknown key 'frobnicate' (in {overlay}): valid keys at the top level: seed," in out


def _integer_keys(schema, path=()):
    """Key paths of the schema whose values (or array items) must be integers."""
    for key, sub in schema.get("properties", {}).items():
        where = (*path, key)
        types = [sub.get("type")] + [alt.get("type") for alt in sub.get("oneOf", [])]
        items = [sub.get("items", {}).get("type")]
        items += [alt.get("items", {}).get("type") for alt in sub.get("oneOf", [])]
        if "integer" in types or (isinstance(sub.get("type"), list) and "integer" in sub["type"]):
            yield where, False
        elif "integer" in items:
            yield where, True
        yield from _integer_keys(sub, where)


def _test_config() -> dict:
    base = _base()
    for section, values in yaml.safe_load((ROOT / "config" / "test.yaml").read_text()).items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return base


def test_every_integer_key_refuses_a_float():
    schema = yaml.safe_load(SCHEMA.read_text())
    keys = list(_integer_keys(schema))
    assert len(keys) > 50  # the audit covers the whole schema (seed, ids, sizes, counts ...)
    valid = _test_config()
    validate_config(valid, SCHEMA)
    for path, is_array in keys:
        config = copy.deepcopy(valid)
        node = config
        for key in path[:-1]:
            node = node[key]
        value = node[path[-1]]
        if is_array:
            value = value if isinstance(value, list) and value else [1]
            node[path[-1]] = [float(value[0]), *value[1:]]
            shown = f"{'.'.join(path)}[0] = {float(value[0])}"
        else:
            value = value if isinstance(value, int) else 1
            node[path[-1]] = float(value)
            shown = f"{'.'.join(path)} = {float(value)}"
        with pytest.raises(ConfigError, match=re.escape(shown) + r": is not of type"):
            validate_config(config, SCHEMA)


def test_validate_config_fills_defaults_as_snakemake_does():
    # the products' CFGHASH is the hash of the filled-in config: it must not change
    from snakemake.utils import validate

    for config in (_base(), _test_config(), {}):
        ours, theirs = copy.deepcopy(config), copy.deepcopy(config)
        validate_config(ours, SCHEMA)
        validate(theirs, str(SCHEMA))
        assert json.dumps(ours) == json.dumps(theirs)  # same keys, values and order


def test_verbose_config_error_has_the_full_report():
    config = _test_config()
    config["layout"]["npixx"] = 16
    with pytest.raises(ConfigError) as short:
        validate_config(
            copy.deepcopy(config), SCHEMA, sources=[("a.yaml", {"layout": {"npixx": 1}})]
        )
    assert "unknown key 'layout.npixx' (in a.yaml): did you mean 'layout.npix'?" in str(short.value)
    assert "Failed validating" not in str(short.value)
    with pytest.raises(ConfigError, match="Failed validating 'additionalProperties'"):
        validate_config(copy.deepcopy(config), SCHEMA, verbose=True)
