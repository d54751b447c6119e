from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.figures import mosaic_figure  # noqa: E402

mosaic_figure(
    snakemake.input.mean,
    snakemake.input.std,
    snakemake.input.coverage,
    snakemake.output[0],
    snakemake.params.config,
)
