from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.layout import write_index_table  # noqa: E402

write_index_table(snakemake.input[0], snakemake.output[0], snakemake.config)
