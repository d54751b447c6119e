# Rules of the 'catalogue' stage (see docs/architecture.md): the mock DES-Y3 catalogue,
# pixelisation into the data patches and into the validation mocks, and an occupancy
# footprint made from a catalogue. One `pixelise` job reads the catalogue once and writes
# every data patch, so `snakemake results/data/patch_0123.fits` runs it for all configured
# patches; `pixelise_mocks` likewise writes every validation mock.
from kappadiff.stages import catalogue as catalogue_stage

# The data stream: the configured catalogue's patches (with their true convergence when the
# catalogue is the mock) and the sky a mock catalogue is made from (none for real data).
DATA_PATCH_FILES = patch_files(f"{RESULTS}/data", data_patch_ids())
TRUTH_PATCH_FILES = (
    patch_files(f"{RESULTS}/truth", data_patch_ids())
    if config["catalogue"]["source"] == "mock"
    else []
)
MOCK_KAPPA_FILES = mock_kappa_files()
# The validation stream: mocks with known truth on validation.patches, always from the
# held-out sky; for a real catalogue made of its own galaxies (positions, weights, mask).
MOCK_DATA_FILES = patch_files(f"{RESULTS}/mocks/data", validation_patch_ids())
MOCK_TRUTH_FILES = patch_files(f"{RESULTS}/mocks/truth", validation_patch_ids())


rule mock_catalogue:
    """Mock DES-Y3 catalogue of the data patches from the held-out simulated sky."""
    input:
        kappa=held_out_kappa_file(),
        layout=f"{RESULTS}/layout/footprint.fits",
    output:
        **mock_catalogue_files(),
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
        **catalogue_files(),
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
        **catalogue_files(),
        layout=f"{RESULTS}/layout/footprint.fits",
        kappa=held_out_kappa_file(),
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
        **catalogue_files(),
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
