from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.baselines import kaiser_squires_patch_file  # noqa: E402

kaiser_squires_patch_file(snakemake.input.data, snakemake.output[0], snakemake.config)
