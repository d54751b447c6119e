# Rules of the 'sims' stage (see docs/architecture.md): simulated skies to tomographic
# convergence maps, results/sims/sim{NNN}/kappa.fits, one job per sky.


include: "sims_common.smk"


rule tomography:
    """Full-sky Born convergence of one simulated sky in the 4 DES-Y3 source bins."""
    input:
        tomography_inputs,
    output:
        f"{RESULTS}/sims/sim{{sim}}/kappa.fits",
    log:
        f"{RESULTS}/logs/tomography/sim{{sim}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tomography/sim{{sim}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        runtime=tomography_runtime,
        mem_mb=tomography_mem_mb,
    params:
        index=sim_index,
        # a change of the simulation settings reruns the rule
        sims=config["sims"],
    script:
        "../../scripts/tomography.py"


ALL_TARGETS.extend(
    f"{RESULTS}/sims/{sim_name(i)}/kappa.fits" for i in range(config["sims"]["n_sims"])
)
