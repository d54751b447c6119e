# Rules of the 'posterior' stage (see docs/architecture.md): posterior samples per patch
# (sampling.method: DPS or split Gibbs).
from kappadiff.stages import posterior as posterior_stage


rule sample_patch:
    """Posterior samples of one data patch: MEAN, STD, SAMPLES, chi2/dof, drift."""
    input:
        data=patch_file(f"{RESULTS}/data", "{patch}"),
        model=f"{RESULTS}/prior/model.pt",
        # A(t) tuned on mocks by the validation stage, when DPS with sampling.tuned_scaling
        scaling=(
            [f"{RESULTS}/validation/scaling.fits"]
            if config["sampling"]["method"] == "dps"
            and config["sampling"]["tuned_scaling"]
            else []
        ),
        # the prior's denoiser covariance, for split Gibbs
        covariance=(
            [f"{RESULTS}/prior/denoiser_covariance.fits"]
            if config["sampling"]["method"] == "split_gibbs"
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
