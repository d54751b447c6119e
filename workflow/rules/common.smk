# Config validation and helpers shared by every rule file.
import os
import sys

from snakemake.common.configfile import load_configfile
from snakemake.utils import min_version

min_version("9.0")

# The Snakefile itself imports the library's config checks; jobs import the installed
# package (`pip install -e .`, or the `-e ..` line of envs/kappadiff.yaml under conda).
SRC = os.path.join(workflow.basedir, "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from kappadiff.config import (  # noqa: E402
    check_config,
    validate_config,
    without_speed_keys,
)


def config_sources():
    """Where the configuration came from, lowest precedence first: the Snakefile's
    configfile, the --configfile files, then --config (for naming a key in error)."""
    given = list(workflow.overwrite_configfiles)
    files = [f for f in workflow.configfiles if f not in given] + given
    cli = ("--config", dict(workflow.config_settings.config))
    return [(shown_path(f), load_configfile(f)) for f in files] + [cli]


def shown_path(path):
    """A path relative to the working directory if it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


# The library validates against the schema instead of snakemake.utils.validate: integer
# keys then take only integers, and a mistake is a line naming the key (the closest valid
# one for an unknown key) instead of the whole schema and config (kept for --verbose).
validate_config(
    config,
    os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
    sources=config_sources(),
    verbose=bool(getattr(workflow.output_settings, "verbose", False)) or None,
)
check_config(config)

RESULTS = config["results"]
ENV = "../../envs/kappadiff.yaml"


wildcard_constraints:
    sim=r"\d{3}",
    patch=r"\d{4}",


def sim_name(i):
    """Directory name of simulated sky i (sim000, sim001, ...)."""
    return f"sim{int(i):03d}"


# Result paths: the rules name every product; the stage functions receive the paths from
# the rules' input and output.


def patch_id(i):
    """Zero-padded id of patch i, the form the {patch} wildcard matches (0123)."""
    return f"{int(i):04d}"


def patch_file(folder, patch):
    """The product of one patch in folder: patch is an id, a zero-padded id or a wildcard
    such as "{patch}"."""
    name = patch if isinstance(patch, str) else patch_id(patch)
    return f"{folder}/patch_{name}.fits"


def patch_files(folder, patches):
    """The products of the given patches (ids or zero-padded ids) in folder."""
    return [patch_file(folder, p) for p in patches]


def held_out_kappa_file():
    """The held-out sky's convergence (sims.mock_sim), the truth of every mock."""
    return f"{RESULTS}/sims/{sim_name(config['sims']['mock_sim'])}/kappa.fits"


# the three files of a DES-Y3 catalogue, by role (the keys the catalogue stage reads)
DESY3_ROLES = ("metacal", "index", "sompz")


def mock_catalogue_files():
    """Files the mock catalogue is written to: fits, plus the DES-Y3 HDF5 triple if asked."""
    files = {"fits": f"{RESULTS}/catalogue/mock.fits"}
    if config["catalogue"]["mock_format"] == "desy3":
        files.update({k: f"{RESULTS}/catalogue/mock_{k}.h5" for k in DESY3_ROLES})
    return files


def catalogue_files():
    """The files of the configured catalogue, by role (fits, or metacal/index/sompz)."""
    cat = config["catalogue"]
    if cat["source"] == "mock":
        files = mock_catalogue_files()
        if cat["mock_format"] == "desy3":
            return {k: files[k] for k in DESY3_ROLES}
        return {"fits": files["fits"]}
    if cat["source"] == "desy3":
        return {k: cat["desy3"][k] for k in DESY3_ROLES}
    return {"fits": cat["fits"]["path"]}


def mock_kappa_files():
    """The sky the data catalogue was made from: the held-out sky for the mock catalogue,
    none for real data."""
    return [held_out_kappa_file()] if config["catalogue"]["source"] == "mock" else []


def training_cutouts():
    """Cut-out files of the training skies (config sims.train_sims)."""
    return [
        f"{RESULTS}/training/{sim_name(i)}_cutouts.npy"
        for i in config["sims"]["train_sims"]
    ]


def prior_params():
    """The configuration the prior training depends on (a change reruns it).

    The GPU speed switches (prior.channels_last, compile, cudnn_benchmark) change no weight
    beyond float rounding, so they are left out.
    """
    prior = without_speed_keys(config["prior"])
    if prior.get("lr_schedule") == "constant":
        # the schedule of every training before the option: their params stay the same
        del prior["lr_schedule"]
    return {"seed": config["seed"], "layout": config["layout"], "prior": prior}


# Every rule file appends the final products of its stage here; `rule all` builds them.
ALL_TARGETS = []
