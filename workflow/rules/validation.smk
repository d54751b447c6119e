# Rules of the 'validation' stage (see docs/architecture.md): DPS runs on mock patches with
# known truth for every candidate likelihood scaling, the TARP search that writes the chosen
# (t_bar, sigma_t) to results/validation/scaling.fits (read by the data sampling rule), and
# the statistics and figures of the validation report.


from kappadiff.stages import validation as validation_stage


include: "validation_common.smk"


rule validate_sample:
    """DPS samples of one mock patch for one validation run (grid candidate, unscaled, tuned)."""
    input:
        unpack(tuned_run_inputs),
        data=f"{MOCKS}/data/patch_{{patch}}.fits",
        model=f"{RESULTS}/prior/model.pt",
    output:
        f"{VALIDATION}/runs/{{run}}/patch_{{patch}}.fits",
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
        scaling=run_scaling,
        # only what the sampler reads: a new grid candidate runs only its own runs
        config=validation_stage.sample_mock_params(config),
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


rule prior_statistics:
    """C_ell, PDF and peaks of unconditional prior draws against the training simulations."""
    input:
        model=f"{RESULTS}/prior/model.pt",
        cutouts=training_cutouts(),
    output:
        table=f"{VALIDATION}/prior_statistics.fits",
        figure=report(
            f"{VALIDATION}/fig0_prior.png",
            caption="../report/validation_prior.rst",
            category="Validation",
        ),
    log:
        f"{RESULTS}/logs/prior_statistics.log",
    benchmark:
        f"{RESULTS}/benchmarks/prior_statistics.tsv"
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
        "../../scripts/prior_statistics.py"


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
        scalings=search_runs(),
        config=validation_params(),
    script:
        "../../scripts/tarp_search.py"


rule validate_calibration:
    """Figure 1: trajectory diagnostic and TARP coverage of tuned and unscaled DPS."""
    input:
        runs=run_files(TUNED) + run_files(UNSCALED),
        scaling=f"{VALIDATION}/scaling.fits",
        truth=validation_truth_files(),
        data=validation_data_files(),
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
        run_paths=run_file_map([TUNED, UNSCALED]),
        config=validation_params(),
    script:
        "../../scripts/validate_calibration.py"


rule validate_statistics:
    """Figure 2 and tables: C_ell, rho_c(ell), ell_0.5, PDF and peaks against the truth."""
    input:
        tuned=run_files(TUNED, mock_patch_ids()),
        truth=validation_truth_files(mock_patch_ids()),
        data=validation_data_files(mock_patch_ids()),
        ks=validation_baseline_files("ks", mock_patch_ids()),
        wiener=validation_baseline_files("wiener", mock_patch_ids()),
        wiener_tomo=validation_baseline_files("wiener_tomo", mock_patch_ids()),
        cutouts=training_cutouts(),
    output:
        table=f"{VALIDATION}/statistics.fits",
        summary=report(
            f"{VALIDATION}/summary.csv",
            caption="../report/validation_summary.rst",
            category="Validation",
        ),
        maps=report(
            f"{VALIDATION}/fig2_maps.png",
            caption="../report/validation_maps.rst",
            category="Validation",
        ),
        statistics=report(
            f"{VALIDATION}/fig2_statistics.png",
            caption="../report/validation_statistics.rst",
            category="Validation",
        ),
    log:
        f"{RESULTS}/logs/validate_statistics.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_statistics.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=15,
        mem_mb=3000,
    params:
        config=validation_params(),
    script:
        "../../scripts/validate_statistics.py"


rule validate_patch_figure:
    """Figure 3: DPS mean, Wiener, KS and DPS std of one data patch, with clusters."""
    input:
        posterior=f"{RESULTS}/posterior/patch_{figure_patch_id()}.fits",
        ks=f"{RESULTS}/baselines/ks/patch_{figure_patch_id()}.fits",
        wiener=f"{RESULTS}/baselines/wiener/patch_{figure_patch_id()}.fits",
        clusters=cluster_source(),
    output:
        report(
            f"{VALIDATION}/fig3_patch.png",
            caption="../report/validation_patch.rst",
            category="Validation",
        ),
    log:
        f"{RESULTS}/logs/validate_patch_figure.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_patch_figure.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
    params:
        config=validation_params(),
    script:
        "../../scripts/validate_patch_figure.py"


rule validate_mosaic_figure:
    """Figure 4: the HEALPix posterior mean and std over the footprint (skyproj)."""
    input:
        mean=f"{RESULTS}/mosaic/kappa_mean.fits",
        std=f"{RESULTS}/mosaic/kappa_std.fits",
        coverage=f"{RESULTS}/mosaic/coverage.fits",
    output:
        report(
            f"{VALIDATION}/fig4_mosaic.png",
            caption="../report/validation_mosaic.rst",
            category="Validation",
        ),
    log:
        f"{RESULTS}/logs/validate_mosaic_figure.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_mosaic_figure.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=10,
        mem_mb=validation_stage.mosaic_figure_memory_mb(config["mosaic"]["nside"]),
    params:
        config=validation_params(),
    script:
        "../../scripts/validate_mosaic_figure.py"


ALL_TARGETS.extend(
    [
        f"{VALIDATION}/prior_statistics.fits",
        f"{VALIDATION}/fig0_prior.png",
        f"{VALIDATION}/scaling.fits",
        f"{VALIDATION}/tarp_search.fits",
        f"{VALIDATION}/tarp_coverage.fits",
        f"{VALIDATION}/fig1_calibration.png",
        f"{VALIDATION}/statistics.fits",
        f"{VALIDATION}/summary.csv",
        f"{VALIDATION}/fig2_maps.png",
        f"{VALIDATION}/fig2_statistics.png",
        f"{VALIDATION}/fig3_patch.png",
        f"{VALIDATION}/fig4_mosaic.png",
    ]
)
