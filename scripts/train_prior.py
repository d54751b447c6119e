from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.prior import train_prior  # noqa: E402

train_prior(
    list(snakemake.input),
    snakemake.output.model,
    snakemake.output.loss_csv,
    snakemake.output.loss_png,
    snakemake.output.samples_png,
    snakemake.params.config,
    threads=snakemake.threads,
    gpus=snakemake.resources.gpu,
)
