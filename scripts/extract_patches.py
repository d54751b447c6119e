from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.layout import extract_patches  # noqa: E402

extract_patches(snakemake.input.kappa, snakemake.input.table, snakemake.output[0])
