# kappadiff: weak-lensing mass maps with a diffusion-model prior (Boruah et al. 2025).
# Run `snakemake --cores 2` (default config) or `snakemake --profile slurm` on a cluster.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        final_products(),
