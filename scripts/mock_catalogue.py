from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.catalogue import make_mock_catalogue  # noqa: E402

make_mock_catalogue(
    snakemake.config,
    snakemake.input.kappa,
    snakemake.input.layout,
    snakemake.params.patches,
    dict(snakemake.output.items()),
)
