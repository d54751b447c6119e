from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.catalogue import catalogue_footprint  # noqa: E402

catalogue_footprint(snakemake.config, dict(snakemake.input.items()), snakemake.output[0])
