from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.scaling_search import calibration_figure  # noqa: E402

calibration_figure(
    snakemake.params.run_paths,
    snakemake.input.scaling[0] if snakemake.input.scaling else None,
    snakemake.input.truth,
    snakemake.input.data,
    snakemake.input.references,
    snakemake.output.coverage,
    snakemake.output.figure,
    snakemake.params.config,
)
