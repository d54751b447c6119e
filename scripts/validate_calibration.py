from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.scaling_search import calibration_figure  # noqa: E402

calibration_figure(
    snakemake.params.run_paths["tuned"],
    snakemake.params.run_paths["unscaled"],
    snakemake.input.scaling,
    snakemake.input.truth,
    snakemake.input.data,
    snakemake.input.references,
    snakemake.output.coverage,
    snakemake.output.figure,
    snakemake.params.config,
)
