from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.statistics import validate_statistics  # noqa: E402

validate_statistics(
    snakemake.input.tuned,
    snakemake.input.truth,
    snakemake.input.data,
    snakemake.input.ks,
    snakemake.input.wiener,
    snakemake.input.wiener_tomo,
    snakemake.input.cutouts,
    snakemake.output.table,
    snakemake.output.summary,
    snakemake.output.maps,
    snakemake.output.statistics,
    snakemake.params.config,
)
