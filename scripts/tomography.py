from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.sims import make_tomography  # noqa: E402

make_tomography(snakemake.config, snakemake.params.index, snakemake.output[0])
