# Config validation and helpers shared by every rule file.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The Snakefile itself imports the library's config checks; jobs import the installed
# package (`pip install -e .`, or the `-e ..` line of envs/kappadiff.yaml under conda).
SRC = os.path.join(workflow.basedir, "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from kappadiff.config import check_config, without_speed_keys  # noqa: E402

validate(config, "../schemas/config.schema.yaml")
check_config(config)

RESULTS = config["results"]
ENV = "../../envs/kappadiff.yaml"


wildcard_constraints:
    sim=r"\d{3}",
    patch=r"\d{4}",


def sim_name(i):
    """Directory name of simulated sky i (sim000, sim001, ...)."""
    return f"sim{int(i):03d}"


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
    return {
        "seed": config["seed"],
        "layout": config["layout"],
        "prior": without_speed_keys(config["prior"]),
    }


# Every rule file appends the final products of its stage here; `rule all` builds them.
ALL_TARGETS = []
