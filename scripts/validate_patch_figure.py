from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.figures import patch_figure  # noqa: E402

patch_figure(
    snakemake.input.posterior,
    snakemake.input.ks,
    snakemake.input.wiener,
    next(iter(snakemake.input.clusters), None),
    snakemake.output[0],
    snakemake.params.config,
)
