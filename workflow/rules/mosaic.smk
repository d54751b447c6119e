# Rules of the 'mosaic' stage (see docs/architecture.md): per-patch products onto HEALPix.
# scripts/mosaic.py is generic (params.hdus -> output.maps, one file per HDU), so the
# baselines mosaic the KAPPA HDU of their patch files with the same script and stage.
from kappadiff.stages.mosaic import mosaic_memory_mb


rule mosaic:
    """Posterior mean and std of every patch onto HEALPix, each pixel from one owning patch."""
    input:
        patches=patch_files(f"{RESULTS}/posterior", data_patch_ids()),
    output:
        maps=[
            f"{RESULTS}/mosaic/kappa_mean.fits",
            f"{RESULTS}/mosaic/kappa_std.fits",
        ],
        coverage=f"{RESULTS}/mosaic/coverage.fits",
    log:
        f"{RESULTS}/logs/mosaic.log",
    benchmark:
        f"{RESULTS}/benchmarks/mosaic.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=30,
        mem_mb=mosaic_memory_mb(config["mosaic"]["nside"]),
    params:
        hdus=["MEAN", "STD"],
        nside=config["mosaic"]["nside"],
    script:
        "../../scripts/mosaic.py"


# The posterior mosaic joins ALL_TARGETS once the posterior stage produces its patch files.
