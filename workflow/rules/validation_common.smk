# Helpers of the validation rules (scaling_search.smk, statistics.smk, figures.smk): run
# names, the candidate grid, input lists and the config subset the products depend on.
from kappadiff.scaling import UNSCALED_RUN, grid_runs
from kappadiff.stages.scaling_search import SPLIT_GIBBS_RUN

VALIDATION = f"{RESULTS}/validation"
MOCKS = f"{RESULTS}/mocks"
UNSCALED = UNSCALED_RUN
TUNED = "tuned"
SPLIT_GIBBS = SPLIT_GIBBS_RUN


wildcard_constraints:
    run=r"unscaled|tuned|split_gibbs|t[-+.0-9e]+_s[-+.0-9e]+",


def dps_validation():
    """Whether the posterior is DPS, validated through the A(t) search; else split Gibbs."""
    return config["sampling"]["method"] == "dps"


def posterior_run():
    """The validation run of the configured sampler: tuned DPS, or split Gibbs."""
    return TUNED if dps_validation() else SPLIT_GIBBS


def mock_patch_ids():
    """Patch ids of the validation mocks (checked against the layout), zero-padded."""
    return [patch_id(i) for i in validation_patch_ids()]


def search_patch_ids():
    """Mock patch ids of the scaling search (validation.search_patches, or all)."""
    v = config["validation"]
    return [patch_id(i) for i in (v["search_patches"] or v["patches"])]


def candidate_runs():
    """Grid candidates of the scaling search, named by their A(t): t{t_bar}_s{sigma_t}."""
    v = config["validation"]
    return grid_runs(v["t_bar"], v["sigma_t"])


def search_runs():
    """Runs the TARP search evaluates: the grid and the unscaled comparison."""
    return [*candidate_runs(), UNSCALED]


def checked_run(wildcards):
    """The {run} wildcard, if it is the tuned run, split Gibbs or one the search evaluates."""
    if wildcards.run not in (TUNED, SPLIT_GIBBS) and wildcards.run not in search_runs():
        raise ValueError(
            f"validation run '{wildcards.run}' is not in the grid validation.t_bar x "
            f"validation.sigma_t ({sorted(search_runs())})"
        )
    return wildcards.run


def run_files(run, patches=None):
    """Posterior products of one run on the given mock patches (default: the search's)."""
    return patch_files(
        f"{VALIDATION}/runs/{run}",
        search_patch_ids() if patches is None else patches,
    )


def run_file_map(runs):
    """{run: [product of each search patch]} for the stage functions."""
    return {run: run_files(run) for run in runs}


def calibration_patches():
    """Mock patches of figure 1: the search's (DPS), or every mock patch (split Gibbs)."""
    return None if dps_validation() else mock_patch_ids()


def calibration_runs():
    """{run: products} of figure 1: tuned and unscaled DPS, or split Gibbs."""
    if dps_validation():
        return run_file_map([TUNED, UNSCALED])
    return {SPLIT_GIBBS: run_files(SPLIT_GIBBS, calibration_patches())}


def tuned_run_inputs(wildcards):
    """The tuned run needs the chosen scaling and, to reuse a run, the grid runs of its patch;
    the split-Gibbs run the prior's denoiser covariance."""
    if wildcards.run == SPLIT_GIBBS:
        return {"covariance": f"{RESULTS}/prior/denoiser_covariance.fits"}
    if wildcards.run != TUNED:
        return {}
    searched = wildcards.patch in search_patch_ids()
    return {
        "scaling": f"{VALIDATION}/scaling.fits",
        "candidates": [
            patch_file(f"{VALIDATION}/runs/{run}", wildcards.patch)
            for run in (candidate_runs() if searched else ())
        ],
    }


def validation_truth_files(patches=None):
    """True κ of the mock patches (default: the search's)."""
    return patch_files(
        f"{MOCKS}/truth", search_patch_ids() if patches is None else patches
    )


def validation_data_files(patches=None):
    """Pixelised mock data (with its MASK) of the mock patches (default: the search's)."""
    return patch_files(
        f"{MOCKS}/data", search_patch_ids() if patches is None else patches
    )


def validation_baseline_files(method, patches):
    """Baseline maps (ks, wiener, wiener_tomo) of the mock patches."""
    return patch_files(f"{MOCKS}/baselines/{method}", patches)


def validation_params():
    """The configuration the validation products depend on.

    The patch lists are left out: a product depends on its patches through its input files,
    so adding a validation patch reruns only what reads it.
    """
    sampling = {k: v for k, v in config["sampling"].items() if k != "patches"}
    validation = {
        k: v
        for k, v in config["validation"].items()
        if k not in ("patches", "search_patches")
    }
    return {
        "seed": config["seed"],
        "sampling": sampling,
        "layout": config["layout"],
        "validation": validation,
    }


def figure_patch_id():
    """Data patch of the representative-patch figure."""
    p = config["validation"]["figure_patch"]
    if p is None:
        patches = config["sampling"]["patches"]
        p = patches[0] if isinstance(patches, list) else 0
    return patch_id(p)


def cluster_source():
    """Cluster catalogue of the patch figure, the truth of that patch on a mock catalogue,
    or nothing (real data without a cluster catalogue)."""
    if config["validation"]["clusters"]:
        return [config["validation"]["clusters"]]
    if config["catalogue"]["source"] == "mock":
        return [patch_file(f"{RESULTS}/truth", figure_patch_id())]
    return []
