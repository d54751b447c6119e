from kappadiff.logs import setup_logging

setup_logging(snakemake.log[0])

from kappadiff.stages.baselines import wiener_patch_file  # noqa: E402

wiener_patch_file(
    snakemake.input.data,
    snakemake.input.power,
    snakemake.output[0],
    snakemake.config,
    tomographic=snakemake.params.tomographic,
)
