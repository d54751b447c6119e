# Rules of the 'catalogue' stage (see docs/architecture.md): the mock DES-Y3 catalogue,
# pixelisation into the data patches and into the validation mocks, and an occupancy
# footprint made from a catalogue. One `pixelise` job reads the catalogue once and writes
# every data patch, so `snakemake results/data/patch_0123.fits` runs it for all configured
# patches; `pixelise_mocks` likewise writes every validation mock.
from kappadiff.stages import catalogue as catalogue_stage

# The data stream: the configured catalogue's patches (with their true convergence when the
# catalogue is the mock) and the sky a mock catalogue is made from (none for real data).
DATA_PATCH_FILES = catalogue_stage.data_patch_files(config, data_patch_ids())
TRUTH_PATCH_FILES = catalogue_stage.truth_patch_files(config, data_patch_ids())
MOCK_KAPPA_FILES = catalogue_stage.mock_kappa_files(config)
# The validation stream: mocks with known truth on validation.patches, always from the
# held-out sky; for a real catalogue made of its own galaxies (positions, weights, mask).
MOCK_DATA_FILES = catalogue_stage.mock_data_files(config, validation_patch_ids())
MOCK_TRUTH_FILES = catalogue_stage.mock_truth_files(config, validation_patch_ids())


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
        patches=mock_catalogue_patch_ids(),
        catalogue=config["catalogue"],
    script:
        "../../scripts/mock_catalogue.py"


rule pixelise:
    """Per-pixel mean shear, noise, mask and counts of every data patch (and a mock's truth)."""
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
        patches=data_patch_ids(),
        catalogue=config["catalogue"],
    script:
        "../../scripts/pixelise.py"


rule pixelise_mocks:
    """Validation mocks with known truth, pixelised like the data, on validation.patches."""
    input:
        **catalogue_stage.catalogue_files(config),
        layout=f"{RESULTS}/layout/footprint.fits",
        kappa=catalogue_stage.held_out_kappa_file(config),
    output:
        data=MOCK_DATA_FILES,
        truth=MOCK_TRUTH_FILES,
    log:
        f"{RESULTS}/logs/pixelise_mocks.log",
    benchmark:
        f"{RESULTS}/benchmarks/pixelise_mocks.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=120,
        mem_mb=catalogue_stage.mock_pixelise_memory_mb(config),
    params:
        patches=validation_patch_ids(),
        catalogue=config["catalogue"],
        seed=config["seed"],
    script:
        "../../scripts/pixelise_mocks.py"


rule catalogue_footprint:
    """HEALPix occupancy footprint of the catalogue, for layout.footprint on real data."""
    input:
        **catalogue_stage.catalogue_files(config),
    output:
        f"{RESULTS}/catalogue/footprint.fits",
    log:
        f"{RESULTS}/logs/catalogue_footprint.log",
    benchmark:
        f"{RESULTS}/benchmarks/catalogue_footprint.tsv"
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


ALL_TARGETS.extend([*DATA_PATCH_FILES, *TRUTH_PATCH_FILES, *MOCK_DATA_FILES])
