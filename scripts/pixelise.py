from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.catalogue import pixelise  # noqa: E402

pixelise(
    snakemake.config,
    dict(snakemake.input.items()),
    snakemake.params.patches,
    list(snakemake.output.data),
    list(snakemake.output.truth),
)
