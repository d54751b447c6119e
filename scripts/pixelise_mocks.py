from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.catalogue import pixelise_mocks  # noqa: E402

pixelise_mocks(
    snakemake.config,
    dict(snakemake.input.items()),
    snakemake.params.patches,
    list(snakemake.output.data),
    list(snakemake.output.truth),
)
