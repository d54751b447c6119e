"""Configuration validation: the JSON schema, and the checks a schema cannot express.

The schema (``workflow/schemas/config.schema.yaml``) checks types, ranges and unknown
keys (:func:`validate_config`, which also fills in the defaults); :func:`check_config` adds
the checks that involve several keys. Both run before any job starts, and every message
names the offending key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import KappadiffInputError

if TYPE_CHECKING:
    # imported where used: every job imports this module (config_hash), few validate
    import jsonschema

__all__ = [
    "SPEED_KEYS",
    "ConfigError",
    "VERBOSE_ENV",
    "check_config",
    "config_hash",
    "method_keys",
    "validate_config",
    "without_speed_keys",
]

#: Environment variable that, set to 1, adds jsonschema's full report to a config error.
VERBOSE_ENV = "KAPPADIFF_VERBOSE"
#: Config errors listed in one message (the rest are counted).
MAX_ERRORS = 10

#: Relative tolerance for patch_size_deg = npix * pixel_scale_arcmin / 60 (the paper's
#: 4.2667 deg is 256 arcmin rounded to 4 decimals, a relative error of 1e-5).
PATCH_SIZE_RTOL = 1e-4

#: Keys of the ``prior`` and ``sampling`` sections that set how fast the network runs on a
#: GPU and nothing else (:mod:`kappadiff.diffusion.speed`): no-ops on CPU, and on a GPU
#: they change only the float rounding, so a change of them reruns no job.
SPEED_KEYS = ("channels_last", "compile", "cudnn_benchmark")


class ConfigError(KappadiffInputError):
    """A configuration value is invalid; the message names the key."""


def _validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """Draft 2020-12 validator that fills in defaults and takes only ints as integers.

    Defaults are set as ``snakemake.utils.validate`` sets them: an absent property gets its
    schema default before the properties are validated, so nested defaults fill in too.
    JSON schema counts 16.0 as an integer, which then fails in ``range`` or an array shape
    inside a job; here it is an error.
    """
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, {"properties": properties}, type_checker=checker)(
        schema
    )


def _dotted(path: Sequence[str | int]) -> str:
    """``layout.npix``, ``sampling.patches[0]``: a key path as a user writes it."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _origin(path: Sequence[str | int], sources: Sequence[tuple[str, Any]]) -> str:
    """' (in <source>)' for the last of ``sources`` that sets the key ``path``."""
    found = None
    for name, node in sources:
        for part in path:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        else:
            found = name
    return f" (in {found})" if found else ""


def _reason(error: jsonschema.ValidationError) -> str:
    """jsonschema's message without the value it starts with ("is not of type 'integer'")."""
    shown = repr(error.instance)
    return (
        error.message[len(shown) :].lstrip() if error.message.startswith(shown) else error.message
    )


def _describe(error: jsonschema.ValidationError, sources: Sequence[tuple[str, Any]]) -> list[str]:
    """One line per problem of a schema error: the key, its value or the closest valid key."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        lines = []
        for key in (k for k in error.instance if k not in allowed):
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f"did you mean '{_dotted([*path, close[0]])}'?"
                if close
                else f"valid keys {'here' if path else 'at the top level'}: {', '.join(allowed)}"
            )
            lines.append(
                f"unknown key '{_dotted([*path, key])}'{_origin([*path, key], sources)}: {hint}"
            )
        return lines
    reason = _reason(error)
    if error.context:
        # oneOf: the alternatives that got deepest into the value say what is wrong (the
        # array one for [1.5] where an array of integers or 'all' is wanted)
        depth = max(len(e.absolute_path) for e in error.context)
        closest = [e for e in error.context if len(e.absolute_path) == depth]
        wrong = [e for e in closest if e.validator != "type"]
        if wrong or depth > len(error.absolute_path):
            return _describe((wrong or closest)[0], sources)
        types = " or ".join(repr(e.validator_value) for e in closest)
        reason = f"is not of type {types}"
    value = reprlib.repr(error.instance)
    if (
        error.validator == "type"
        and isinstance(error.instance, float)
        and "integer" in str(error.validator_value)
    ):
        reason += f" (write {int(error.instance)})" if error.instance.is_integer() else ""
    key = _dotted(path) or "the configuration"
    about = error.schema.get("description", "")
    about = f" [{about.split('. ')[0].rstrip('.')}]" if about else ""
    return [f"{key} = {value}{_origin(path, sources)}: {reason}{about}"]


def validate_config(
    config: dict[str, Any],
    schema_path: str | os.PathLike,
    sources: Sequence[tuple[str, Mapping[str, Any]]] = (),
    verbose: bool | None = None,
) -> None:
    """Validate a configuration against the JSON schema, filling in its defaults in place.

    As ``snakemake.utils.validate`` (JSON schema draft 2020-12, defaults set), except that
    an integer key takes only an int (16.0 is refused) and that the errors are short: one
    line a problem, naming the key, its value and what is wrong, with the closest valid
    key for an unknown one (``difflib``), and where the key was set.

    Parameters
    ----------
    config
        The merged configuration; defaults are filled in.
    schema_path
        The schema (YAML or JSON).
    sources
        Where the configuration came from, as ``(name, mapping)`` in the order they were
        merged (config files, then ``--config``): a key in error is traced to the last
        that sets it.
    verbose
        Add jsonschema's full report of each error (the schema and the value); None: when
        the environment variable ``KAPPADIFF_VERBOSE`` is 1.

    Raises
    ------
    ConfigError
        Listing up to :data:`MAX_ERRORS` problems.
    """
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    errors = sorted(
        _validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if not errors:
        return
    lines = [line for error in errors for line in _describe(error, sources)]
    text = "\n".join(f"  {line}" for line in lines[:MAX_ERRORS])
    if len(lines) > MAX_ERRORS:
        text += f"\n  ... and {len(lines) - MAX_ERRORS} more"
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV) == "1"
    if verbose:
        text += "".join(f"\n\n{error}" for error in errors)
    else:
        text += f"\n(jsonschema's full report: {VERBOSE_ENV}=1 or snakemake --verbose)"
    raise ConfigError(f"invalid configuration ({schema_path}):\n{text}")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def check_config(config: Mapping[str, Any]) -> None:
    """Check cross-key consistency of a schema-validated configuration.

    This is the one place for the checks that involve several keys; the workflow calls it
    once, before any job.

    Parameters
    ----------
    config
        The configuration after JSON-schema validation (defaults filled in).

    Raises
    ------
    ConfigError
        With the dotted key path of the first inconsistent value in the message.
    """
    _check_nsides(config)
    _check_skies(config["sims"])
    _check_layout(config["layout"])
    _check_sampling(config)
    if "validation" in config:
        _check_validation(config["validation"], config["layout"])


def _check_nsides(config: Mapping[str, Any]) -> None:
    """HEALPix resolutions are powers of 2."""
    sims = config["sims"]
    for key in ("nside",):
        if not _is_power_of_two(sims[key]):
            raise ConfigError(f"sims.{key} = {sims[key]} is not a power of 2")
    if not _is_power_of_two(config["mosaic"]["nside"]):
        raise ConfigError(f"mosaic.nside = {config['mosaic']['nside']} is not a power of 2")


def _check_skies(sims: Mapping[str, Any]) -> None:
    """The simulated skies: training and mock skies among them, a shell file for each."""
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
    if sims["source"] != "lognormal" and len(sims["shell_files"]) < n_sims:
        raise ConfigError(
            f"sims.shell_files lists {len(sims['shell_files'])} simulations, "
            f"but sims.n_sims = {n_sims} with sims.source = {sims['source']}"
        )


def _check_layout(layout: Mapping[str, Any]) -> None:
    """The ``layout`` section: the patch size is npix pixels of pixel_scale_arcmin."""
    size_arcmin = layout["npix"] * layout["pixel_scale_arcmin"]
    expected = size_arcmin / 60.0
    if abs(layout["patch_size_deg"] - expected) > PATCH_SIZE_RTOL * expected:
        raise ConfigError(
            f"layout.patch_size_deg = {layout['patch_size_deg']} does not match "
            f"layout.npix x layout.pixel_scale_arcmin = {layout['npix']} x "
            f"{layout['pixel_scale_arcmin']}' = {expected:.6g} deg"
        )


def _check_sampling(config: Mapping[str, Any]) -> None:
    """Split Gibbs's exact data step needs κ affine in the network's variable."""
    normalisation = config.get("prior", {}).get("normalisation", "affine")
    if config.get("sampling", {}).get("method") == "split_gibbs" and normalisation != "affine":
        raise ConfigError(
            "sampling.method = split_gibbs needs prior.normalisation = affine (its data step "
            "is an exact Gaussian only for kappa affine in the network's variable), but "
            f"prior.normalisation = {normalisation}"
        )


def _check_validation(v: Mapping[str, Any], layout: Mapping[str, Any]) -> None:
    """The ``validation`` section: the search patches, the TARP regions within a patch."""
    # the scaling search runs on some of the validation's mock patches
    search = v.get("search_patches")
    missing = sorted(set(search or []) - set(v["patches"]))
    if missing:
        raise ConfigError(
            f"validation.search_patches {missing} are not among validation.patches "
            f"{list(v['patches'])}: set validation.search_patches to some of them, or "
            "null to search them all"
        )
    npix = layout["npix"]
    if npix % (v["n_regions"] * v["block"]):
        raise ConfigError(
            f"validation.n_regions x validation.block = {v['n_regions']} x {v['block']} "
            f"does not divide layout.npix = {npix}"
        )


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a configuration, written to every product header."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_speed_keys(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section without its :data:`SPEED_KEYS`, for a rule's params (rerun trigger)."""
    return {k: v for k, v in section.items() if k not in SPEED_KEYS}


#: Sampling keys that only one method reads.
METHOD_KEYS = {
    "dps": (
        "n_steps",
        "step_power",
        "eta",
        "scaled",
        "t_bar",
        "sigma_t",
        "tuned_scaling",
        "step",
        "zeta",
    ),  # fmt: skip
    "split_gibbs": ("split_gibbs",),
}


def method_keys(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The ``sampling`` section without the keys of the method it does not use.

    For DPS (the default) that leaves out ``method`` and ``split_gibbs`` too, so a run's
    params and resume keys are those of a configuration that predates the choice.
    """
    method = sampling.get("method", "dps")
    other = [k for m, keys in METHOD_KEYS.items() if m != method for k in keys]
    if method == "dps":
        other += ["method"]
    return {k: v for k, v in sampling.items() if k not in other}
