# Rules of the likelihood-scaling search (see docs/architecture.md), and the validation
# runs of either sampler on the mocks (split Gibbs needs no search): DPS runs on mock
# patches with known truth for every candidate scaling, the prior's TARP references, the TARP
# search that writes the chosen (t_bar, sigma_t) to results/validation/scaling.fits (read
# by the data sampling rule), and figure 1.

from kappadiff.stages.scaling_search import sample_mock_params


rule validate_sample:
    """DPS samples of one mock patch for one validation run (grid candidate, unscaled, tuned)."""
    input:
        unpack(tuned_run_inputs),
        data=patch_file(f"{MOCKS}/data", "{patch}"),
        model=f"{RESULTS}/prior/model.pt",
    output:
        patch_file(f"{VALIDATION}/runs/{{run}}", "{patch}"),
    log:
        f"{RESULTS}/logs/validate_sample/{{run}}/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_sample/{{run}}/patch_{{patch}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        runtime=config["sampling"]["runtime_min"],
        mem_mb=config["sampling"]["mem_mb"],
        gpu=1,
    params:
        run=checked_run,
        # only what the sampler reads: a new grid candidate runs only its own runs
        config=lambda wildcards: sample_mock_params(config, wildcards.run),
    script:
        "../../scripts/validate_sample.py"


rule tarp_references:
    """Unconditional prior maps: the reference points of the TARP coverage test."""
    input:
        model=f"{RESULTS}/prior/model.pt",
    output:
        f"{VALIDATION}/tarp_references.fits",
    log:
        f"{RESULTS}/logs/tarp_references.log",
    benchmark:
        f"{RESULTS}/benchmarks/tarp_references.tsv"
    conda:
        ENV
    threads: 2
    resources:
        runtime=config["sampling"]["runtime_min"],
        mem_mb=config["sampling"]["mem_mb"],
        gpu=1,
    params:
        config=validation_params(),
    script:
        "../../scripts/tarp_references.py"


rule tarp_search:
    """TARP coverage of every candidate scaling and of unscaled DPS; the best goes to scaling.fits."""
    input:
        runs=[f for files in run_file_map(search_runs()).values() for f in files],
        truth=validation_truth_files(),
        data=validation_data_files(),
        references=f"{VALIDATION}/tarp_references.fits",
    output:
        scaling=f"{VALIDATION}/scaling.fits",
        coverage=f"{VALIDATION}/tarp_search.fits",
    log:
        f"{RESULTS}/logs/tarp_search.log",
    benchmark:
        f"{RESULTS}/benchmarks/tarp_search.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=15,
        mem_mb=2000,
    params:
        run_paths=run_file_map(search_runs()),
        config=validation_params(),
    script:
        "../../scripts/tarp_search.py"


rule validate_calibration:
    """Figure 1: trajectory diagnostic and TARP coverage of tuned and unscaled DPS, or of
    split Gibbs on every mock patch."""
    input:
        runs=[f for files in calibration_runs().values() for f in files],
        scaling=[f"{VALIDATION}/scaling.fits"] if dps_validation() else [],
        truth=validation_truth_files(calibration_patches()),
        data=validation_data_files(calibration_patches()),
        references=f"{VALIDATION}/tarp_references.fits",
    output:
        coverage=f"{VALIDATION}/tarp_coverage.fits",
        figure=report(
            f"{VALIDATION}/fig1_calibration.png",
            caption="../report/validation_calibration.rst",
            category="Validation",
        ),
    log:
        f"{RESULTS}/logs/validate_calibration.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_calibration.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=15,
        mem_mb=2000,
    params:
        run_paths=calibration_runs(),
        config=validation_params(),
    script:
        "../../scripts/validate_calibration.py"


# the A(t) search only where DPS is the sampler (a target by name otherwise)
if dps_validation():
    ALL_TARGETS.extend([f"{VALIDATION}/scaling.fits", f"{VALIDATION}/tarp_search.fits"])
ALL_TARGETS.extend(
    [f"{VALIDATION}/tarp_coverage.fits", f"{VALIDATION}/fig1_calibration.png"]
)
