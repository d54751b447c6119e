from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.statistics import prior_statistics  # noqa: E402

prior_statistics(
    snakemake.input.model,
    snakemake.input.cutouts,
    snakemake.output.table,
    snakemake.output.figure,
    snakemake.params.config,
    threads=snakemake.threads,
)
