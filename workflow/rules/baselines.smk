# Rules of the 'baselines' stage (see docs/architecture.md): Kaiser-Squires, per-bin and
# tomographic Wiener filter maps of every data patch, and their HEALPix mosaics through
# the shared mosaic script (scripts/mosaic.py, generic in the HDUs it mosaics).
from kappadiff.stages.baselines import MEASURED, signal_power_path
from kappadiff.stages.mosaic import mosaic_memory_mb


wildcard_constraints:
    method=r"ks|wiener|wiener_tomo",


if config["lensing"]["wiener_signal_power"] == MEASURED:

    rule signal_power:
        """Mean flat-sky auto and cross C_ell of the training cut-outs (the Wiener signal power)."""
        input:
            cutouts=[
                f"{RESULTS}/training/{sim_name(i)}_cutouts.npy"
                for i in config["sims"]["train_sims"]
            ],
        output:
            signal_power_path(config),
        log:
            f"{RESULTS}/logs/signal_power.log",
        benchmark:
            f"{RESULTS}/benchmarks/signal_power.tsv"
        conda:
            ENV
        threads: 1
        resources:
            runtime=60,
            mem_mb=2000,
        params:
            lensing=config["lensing"],
            layout=config["layout"],
        script:
            "../../scripts/signal_power.py"


rule baseline_ks:
    """Kaiser-Squires E and B maps of one data patch (masked pixels zero-filled)."""
    input:
        data=patch_file(f"{RESULTS}/data", "{patch}"),
    output:
        patch_file(f"{RESULTS}/baselines/ks", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_ks/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_ks/patch_{{patch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
    params:
        lensing=config["lensing"],
    script:
        "../../scripts/baseline_ks.py"


rule baseline_wiener:
    """Wiener filter of one data patch, per bin, by preconditioned conjugate gradients."""
    input:
        data=patch_file(f"{RESULTS}/data", "{patch}"),
        power=signal_power_path(config),
    output:
        patch_file(f"{RESULTS}/baselines/wiener", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_wiener/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_wiener/patch_{{patch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        lensing=config["lensing"],
        tomographic=False,
    script:
        "../../scripts/baseline_wiener.py"


rule baseline_wiener_tomo:
    """Tomographic Wiener filter of one data patch: all bins at once, with cross-spectra."""
    input:
        data=patch_file(f"{RESULTS}/data", "{patch}"),
        power=signal_power_path(config),
    output:
        patch_file(f"{RESULTS}/baselines/wiener_tomo", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_wiener_tomo/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_wiener_tomo/patch_{{patch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        lensing=config["lensing"],
        tomographic=True,
    script:
        "../../scripts/baseline_wiener.py"


# The same baselines of the validation mocks (results/mocks/data), for the statistics.
use rule baseline_ks as baseline_ks_mock with:
    input:
        data=patch_file(f"{RESULTS}/mocks/data", "{patch}"),
    output:
        patch_file(f"{RESULTS}/mocks/baselines/ks", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_ks_mock/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_ks_mock/patch_{{patch}}.tsv"


use rule baseline_wiener as baseline_wiener_mock with:
    input:
        data=patch_file(f"{RESULTS}/mocks/data", "{patch}"),
        power=signal_power_path(config),
    output:
        patch_file(f"{RESULTS}/mocks/baselines/wiener", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_wiener_mock/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_wiener_mock/patch_{{patch}}.tsv"


use rule baseline_wiener_tomo as baseline_wiener_tomo_mock with:
    input:
        data=patch_file(f"{RESULTS}/mocks/data", "{patch}"),
        power=signal_power_path(config),
    output:
        patch_file(f"{RESULTS}/mocks/baselines/wiener_tomo", "{patch}"),
    log:
        f"{RESULTS}/logs/baseline_wiener_tomo_mock/patch_{{patch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_wiener_tomo_mock/patch_{{patch}}.tsv"


rule baseline_mosaic:
    """HEALPix mosaic of one baseline's KAPPA maps over all data patches."""
    input:
        # {method} stays a wildcard of the input pattern
        patches=patch_files(f"{RESULTS}/baselines/{{method}}", data_patch_ids()),
    output:
        maps=[f"{RESULTS}/mosaic/{{method}}_kappa.fits"],
        coverage=f"{RESULTS}/mosaic/{{method}}_coverage.fits",
    log:
        f"{RESULTS}/logs/baseline_mosaic/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_mosaic/{{method}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=30,
        mem_mb=mosaic_memory_mb(config["mosaic"]["nside"]),
    params:
        hdus=["KAPPA"],
        nside=config["mosaic"]["nside"],
    script:
        "../../scripts/mosaic.py"


ALL_TARGETS.extend(
    [
        *patch_files(f"{RESULTS}/baselines/ks", data_patch_ids()),
        *patch_files(f"{RESULTS}/baselines/wiener", data_patch_ids()),
        *patch_files(f"{RESULTS}/baselines/wiener_tomo", data_patch_ids()),
        f"{RESULTS}/mosaic/ks_kappa.fits",
        f"{RESULTS}/mosaic/wiener_kappa.fits",
        f"{RESULTS}/mosaic/wiener_tomo_kappa.fits",
    ]
)
