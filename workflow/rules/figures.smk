# Rules of the figures of the data: one patch with clusters (figure 3) and the HEALPix
# mosaic (figure 4).

from kappadiff.stages.figures import mosaic_figure_memory_mb


rule validate_patch_figure:
    """Figure 3: DPS mean, Wiener, KS and DPS std of one data patch, with clusters."""
    input:
        posterior=patch_file(f"{RESULTS}/posterior", figure_patch_id()),
        ks=patch_file(f"{RESULTS}/baselines/ks", figure_patch_id()),
        wiener=patch_file(f"{RESULTS}/baselines/wiener", figure_patch_id()),
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
        mem_mb=mosaic_figure_memory_mb(config["mosaic"]["nside"]),
    params:
        config=validation_params(),
    script:
        "../../scripts/validate_mosaic_figure.py"


ALL_TARGETS.extend(
    [
        f"{VALIDATION}/fig3_patch.png",
        f"{VALIDATION}/fig4_mosaic.png",
    ]
)
