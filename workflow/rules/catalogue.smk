# Rules of the 'catalogue' stage (see docs/architecture.md): the mock DES-Y3 catalogue,
# pixelisation into the data patches, and an occupancy footprint made from a catalogue.
# One `pixelise` job reads the catalogue once and writes every data patch, so
# `snakemake results/data/patch_0123.fits` runs it for all configured patches.
from kappadiff.stages import catalogue as catalogue_stage

# Outputs of `pixelise` (data patches and the validation's mock patches, with their true
# convergence on mocks) and the convergence map a mock is made from (none for real data).
DATA_PATCH_FILES = catalogue_stage.data_patch_files(config, pixelised_patch_ids())
TRUTH_PATCH_FILES = catalogue_stage.truth_patch_files(config, pixelised_patch_ids())
MOCK_KAPPA_FILES = catalogue_stage.mock_kappa_files(config)


rule mock_catalogue:
    """Mock DES-Y3 catalogue of the data patches from the held-out simulated sky."""
    input:
        kappa=f"{RESULTS}/sims/sim{config['sims']['mock_sim']:03d}/kappa.fits",
        layout=f"{RESULTS}/layout/footprint.fits",
    output:
        **catalogue_stage.mock_catalogue_files(config),
    log:
        f"{RESULTS}/logs/mock_catalogue.log",
    benchmark:
        f"{RESULTS}/benchmarks/mock_catalogue.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=60,
        mem_mb=catalogue_stage.mock_memory_mb(config),
    params:
        patches=pixelised_patch_ids(),
        catalogue=config["catalogue"],
    script:
        "../../scripts/mock_catalogue.py"


rule pixelise:
    """Per-pixel mean shear, noise, mask and counts of every data patch (and mock truth)."""
    input:
        **catalogue_stage.catalogue_files(config),
        layout=f"{RESULTS}/layout/footprint.fits",
        kappa=MOCK_KAPPA_FILES,
    output:
        data=DATA_PATCH_FILES,
        truth=TRUTH_PATCH_FILES,
    log:
        f"{RESULTS}/logs/pixelise.log",
    benchmark:
        f"{RESULTS}/benchmarks/pixelise.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=120,
        mem_mb=catalogue_stage.pixelise_memory_mb(config),
    params:
        patches=pixelised_patch_ids(),
        catalogue=config["catalogue"],
    script:
        "../../scripts/pixelise.py"


rule catalogue_footprint:
    """HEALPix occupancy footprint of the catalogue, for layout.footprint on real data."""
    input:
        **catalogue_stage.catalogue_files(config),
    output:
        f"{RESULTS}/catalogue/footprint.fits",
    log:
        f"{RESULTS}/logs/catalogue_footprint.log",
    conda:
        ENV
    threads: 1
    resources:
        runtime=60,
        mem_mb=1000,
    params:
        catalogue=config["catalogue"],
    script:
        "../../scripts/catalogue_footprint.py"


ALL_TARGETS.extend([*DATA_PATCH_FILES, *TRUTH_PATCH_FILES])
