from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.mosaic import write_mosaic  # noqa: E402

write_mosaic(
    snakemake.input.patches,
    snakemake.params.hdus,
    snakemake.output.maps,
    snakemake.output.coverage,
    snakemake.params.nside,
    snakemake.config,
)
