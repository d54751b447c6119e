from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.prior import measure_denoiser_covariance  # noqa: E402

measure_denoiser_covariance(
    snakemake.input.model,
    snakemake.input.cutouts,
    snakemake.output[0],
    snakemake.params.config,
    threads=snakemake.threads,
)
