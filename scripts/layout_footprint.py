from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.layout import write_footprint_layout  # noqa: E402

write_footprint_layout(snakemake.config, snakemake.output[0])
