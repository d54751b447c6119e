# kappadiff: weak-lensing mass maps with a diffusion-model prior (Boruah et al. 2025).
# Run `snakemake --cores 2` (default config) or `snakemake --profile slurm` on a cluster.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/provenance.smk"
include: "workflow/rules/sims.smk"
include: "workflow/rules/layout.smk"
include: "workflow/rules/catalogue.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/prior.smk"
include: "workflow/rules/posterior.smk"
include: "workflow/rules/mosaic.smk"
include: "workflow/rules/validation_common.smk"
include: "workflow/rules/scaling_search.smk"
include: "workflow/rules/statistics.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
