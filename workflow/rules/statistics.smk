# Rules of the validation statistics (see docs/validation.md): the prior against the
# simulations (figure 0) and the posterior (tuned DPS or split Gibbs), Wiener, KS and the
# truth on the mocks (tables and figure 2).


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


rule validate_statistics:
    """Figure 2 and tables: C_ell, rho_c(ell), ell_0.5, PDF and peaks against the truth."""
    input:
        tuned=run_files(posterior_run(), mock_patch_ids()),
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


ALL_TARGETS.extend(
    [
        f"{VALIDATION}/prior_statistics.fits",
        f"{VALIDATION}/fig0_prior.png",
        f"{VALIDATION}/statistics.fits",
        f"{VALIDATION}/summary.csv",
        f"{VALIDATION}/fig2_maps.png",
        f"{VALIDATION}/fig2_statistics.png",
    ]
)
