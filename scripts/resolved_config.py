from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.provenance import write_resolved_config  # noqa: E402

write_resolved_config(snakemake.params.config, snakemake.output[0])
