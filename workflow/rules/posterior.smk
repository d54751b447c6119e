# Rules of the 'posterior' stage (see docs/architecture.md): DPS posterior samples per patch.
from kappadiff.stages import posterior as posterior_stage


rule sample_patch:
    """DPS posterior samples of one data patch: MEAN, STD, SAMPLES, chi2/dof, drift."""
    input:
        data=patch_file(f"{RESULTS}/data", "{patch}"),
        model=f"{RESULTS}/prior/model.pt",
        # A(t) tuned on mocks by the validation stage, when sampling.tuned_scaling asks
        scaling=(
            [f"{RESULTS}/validation/scaling.fits"]
            if config["sampling"]["tuned_scaling"]
            else []
        ),
    output:
        patch_file(f"{RESULTS}/posterior", "{patch}"),
    log:
        f"{RESULTS}/logs/sample_patch/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_patch/patch_{{patch}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        runtime=config["sampling"]["runtime_min"],
        mem_mb=config["sampling"]["mem_mb"],
        gpu=1,
    params:
        # a change of seed or sampling settings reruns the patches
        config=posterior_stage.sampling_params(config),
    script:
        "../../scripts/sample_patch.py"


ALL_TARGETS.extend(patch_files(f"{RESULTS}/posterior", data_patch_ids()))
