from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.baselines import measure_signal_power  # noqa: E402

measure_signal_power(snakemake.input.cutouts, snakemake.output[0], snakemake.config)
