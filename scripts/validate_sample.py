from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.scaling_search import sample_mock  # noqa: E402

sample_mock(
    snakemake.input.data,
    snakemake.input.model,
    snakemake.output[0],
    snakemake.params.config,
    int(snakemake.wildcards.patch),
    snakemake.params.run,
    scaling_path=snakemake.input.get("scaling"),
    candidate_paths=snakemake.input.get("candidates", []),
    threads=snakemake.threads,
    covariance_path=snakemake.input.get("covariance"),
)
