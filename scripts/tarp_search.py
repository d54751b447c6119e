from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.scaling_search import search_scaling  # noqa: E402

search_scaling(
    snakemake.params.run_paths,
    snakemake.input.truth,
    snakemake.input.data,
    snakemake.input.references,
    snakemake.output.scaling,
    snakemake.output.coverage,
    snakemake.params.config,
)
