from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.posterior import sample_patch  # noqa: E402

sample_patch(
    snakemake.input.data,
    snakemake.input.model,
    snakemake.output[0],
    snakemake.params.config,
    int(snakemake.wildcards.patch),
    threads=snakemake.threads,
    scaling_path=snakemake.input.scaling[0] if snakemake.input.scaling else None,
    covariance_path=snakemake.input.covariance[0] if snakemake.input.covariance else None,
)
