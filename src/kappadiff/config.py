"""Configuration checks that a JSON schema cannot express.

The schema (``workflow/schemas/config.schema.yaml``) checks types, ranges and unknown
keys; :func:`check_config` adds the checks that involve several keys. Both run before any
job starts, and every message names the offending key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import KappadiffInputError

__all__ = ["SPEED_KEYS", "ConfigError", "check_config", "config_hash", "without_speed_keys"]

#: Relative tolerance for patch_size_deg = npix * pixel_scale_arcmin / 60 (the paper's
#: 4.2667 deg is 256 arcmin rounded to 4 decimals, a relative error of 1e-5).
PATCH_SIZE_RTOL = 1e-4

#: Keys of the ``prior`` and ``sampling`` sections that set how fast the network runs on a
#: GPU and nothing else (:mod:`kappadiff.diffusion.speed`): no-ops on CPU, and on a GPU
#: they change only the float rounding, so a change of them reruns no job.
SPEED_KEYS = ("channels_last", "compile", "cudnn_benchmark")


class ConfigError(KappadiffInputError):
    """A configuration value is invalid; the message names the key."""


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def check_config(config: Mapping[str, Any]) -> None:
    """Check cross-key consistency of a schema-validated configuration.

    Parameters
    ----------
    config
        The configuration after JSON-schema validation (defaults filled in).

    Raises
    ------
    ConfigError
        With the dotted key path of the first inconsistent value in the message.
    """
    sims = config["sims"]
    for key in ("nside",):
        if not _is_power_of_two(sims[key]):
            raise ConfigError(f"sims.{key} = {sims[key]} is not a power of 2")
    if not _is_power_of_two(config["mosaic"]["nside"]):
        raise ConfigError(f"mosaic.nside = {config['mosaic']['nside']} is not a power of 2")

    n_sims = sims["n_sims"]
    for i in sims["train_sims"]:
        if i >= n_sims:
            raise ConfigError(f"sims.train_sims contains {i}, but sims.n_sims = {n_sims}")
    if sims["mock_sim"] >= n_sims:
        raise ConfigError(f"sims.mock_sim = {sims['mock_sim']}, but sims.n_sims = {n_sims}")
    if sims["mock_sim"] in sims["train_sims"]:
        raise ConfigError(
            f"sims.mock_sim = {sims['mock_sim']} is also in sims.train_sims: "
            "the mock sky must be held out of prior training"
        )

    layout = config["layout"]
    size_arcmin = layout["npix"] * layout["pixel_scale_arcmin"]
    expected = size_arcmin / 60.0
    if abs(layout["patch_size_deg"] - expected) > PATCH_SIZE_RTOL * expected:
        raise ConfigError(
            f"layout.patch_size_deg = {layout['patch_size_deg']} does not match "
            f"layout.npix x layout.pixel_scale_arcmin = {layout['npix']} x "
            f"{layout['pixel_scale_arcmin']}' = {expected:.6g} deg"
        )

    # the scaling search runs on some of the validation's mock patches
    if "validation" in config:
        v = config["validation"]
        search = v.get("search_patches")
        missing = sorted(set(search or []) - set(v["patches"]))
        if missing:
            raise ConfigError(
                f"validation.search_patches {missing} are not among validation.patches "
                f"{list(v['patches'])}: set validation.search_patches to some of them, or "
                "null to search them all"
            )


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a configuration, written to every product header."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_speed_keys(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section without its :data:`SPEED_KEYS`, for a rule's params (rerun trigger)."""
    return {k: v for k, v in section.items() if k not in SPEED_KEYS}
