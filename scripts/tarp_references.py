from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.prior import draw_tarp_references  # noqa: E402

draw_tarp_references(
    snakemake.input.model, snakemake.output[0], snakemake.params.config, threads=snakemake.threads
)
