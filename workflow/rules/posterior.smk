# Rules of the 'posterior' stage (see docs/architecture.md): DPS posterior samples per patch.


def sampling_params():
    """The configuration a patch's samples depend on (a change reruns the patches).

    The patch list is left out, so adding a patch does not rerun the others.
    """
    sampling = {k: v for k, v in config["sampling"].items() if k != "patches"}
    return {"seed": config["seed"], "sampling": sampling}


def posterior_files():
    """Posterior products of the configured patches (sampling.patches)."""
    return [f"{RESULTS}/posterior/patch_{i:04d}.fits" for i in data_patch_ids()]


rule sample_patch:
    """DPS posterior samples of one data patch: MEAN, STD, SAMPLES, chi2/dof, drift."""
    input:
        data=f"{RESULTS}/data/patch_{{patch}}.fits",
        model=f"{RESULTS}/prior/model.pt",
    output:
        f"{RESULTS}/posterior/patch_{{patch}}.fits",
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
        config=sampling_params(),
    script:
        "../../scripts/sample_patch.py"
