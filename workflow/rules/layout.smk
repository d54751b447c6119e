# Rules of the 'layout' stage (see docs/architecture.md): patch layouts and training cut-outs.
# The footprint layout is a pure function of the config (under a second to compute), so the
# data patch ids are known when the DAG is built; `layout_footprint` writes the same centres.
import functools

from kappadiff.stages import layout as layout_stage

# data_patch_ids(): footprint patch ids to reconstruct (config sampling.patches, or all).
data_patch_ids = functools.cache(functools.partial(layout_stage.data_patch_ids, config))
# validation_patch_ids(): footprint patch ids of the validation mocks (validation.patches).
validation_patch_ids = functools.cache(
    functools.partial(layout_stage.validation_patch_ids, config)
)
# mock_catalogue_patch_ids(): the patches a mock catalogue covers (data and validation).
mock_catalogue_patch_ids = functools.cache(
    functools.partial(layout_stage.mock_catalogue_patch_ids, config)
)


rule layout_fullsky:
    """The 2,146 training patch centres of a full sky (40 iso-latitude rings)."""
    output:
        f"{RESULTS}/layout/fullsky.fits",
    log:
        f"{RESULTS}/logs/layout_fullsky.log",
    benchmark:
        f"{RESULTS}/benchmarks/layout_fullsky.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=5,
        mem_mb=500,
    params:
        # a change of the patch geometry reruns the rule
        layout=config["layout"],
    script:
        "../../scripts/layout_fullsky.py"


rule layout_footprint:
    """Overlapping data patches covering the survey footprint (~410 for DES)."""
    input:
        layout_stage.footprint_input_files(config),
    output:
        f"{RESULTS}/layout/footprint.fits",
    log:
        f"{RESULTS}/logs/layout_footprint.log",
    benchmark:
        f"{RESULTS}/benchmarks/layout_footprint.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        layout=config["layout"],
    script:
        "../../scripts/layout_footprint.py"


rule index_table:
    """HEALPix indices of every training patch pixel, built once for all skies and bins."""
    input:
        rules.layout_fullsky.output[0],
    output:
        f"{RESULTS}/layout/fullsky_index.npz",
    log:
        f"{RESULTS}/logs/index_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_table.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=20,
        mem_mb=layout_stage.extract_memory_mb(config),
    params:
        layout=config["layout"],
        nside=config["sims"]["nside"],
    script:
        "../../scripts/index_table.py"


rule extract_patches:
    """All training cut-outs of one simulated sky, [patch, bin, row, col] float32."""
    input:
        kappa=f"{RESULTS}/sims/sim{{sim}}/kappa.fits",
        table=rules.index_table.output[0],
    output:
        f"{RESULTS}/training/sim{{sim}}_cutouts.npy",
    log:
        f"{RESULTS}/logs/extract_patches/sim{{sim}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_patches/sim{{sim}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=30,
        mem_mb=layout_stage.extract_memory_mb(config),
    script:
        "../../scripts/extract_patches.py"


ALL_TARGETS.extend(
    [
        f"{RESULTS}/layout/fullsky.fits",
        f"{RESULTS}/layout/footprint.fits",
        *[
            f"{RESULTS}/training/{sim_name(i)}_cutouts.npy"
            for i in config["sims"]["train_sims"]
        ],
    ]
)
