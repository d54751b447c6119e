"""Real catalogues end to end: the DES-Y3 HDF5 layout and a FITS table, as a user runs them.

A catalogue in each format is made from a simulated sky (``simulated_catalogue``), and the
test configuration is run with plain ``snakemake`` and an overlay naming it, with no target,
from an empty results folder, to the mosaic. The validation mocks must then carry the
data's own mask and noise (the real galaxies, their shapes rotated), the data sampler must
read the scaling tuned on those mocks, and switching ``catalogue.source`` in the same
results folder must rebuild everything that descends from the catalogue, never pairing two
catalogues' products. The FITS catalogue runs through ``--profile slurm`` in test_slurm.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simulated_catalogue
import yaml
from astropy.io import fits

from kappadiff.catalogue import (
    GalaxyChunk,
    PatchGrid,
    ShapeNoiseMock,
    ShearCalibration,
    pixelise_catalogue,
)
from kappadiff.products import ProductError, check_same_catalogue

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "config" / "test.yaml"
RUN_TIMEOUT_S = 900


def snakemake(results: Path, overlay: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --cores 2 --configfile config/test.yaml <overlay>` as the README shows it."""
    cmd = [
        sys.executable, "-m", "snakemake", *args, "--cores", "2",
        "--configfile", "config/test.yaml", str(overlay),
        "--config", f"results={results}",
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def overlay_file(folder: Path, catalogue: dict) -> Path:
    path = folder / f"{catalogue['source']}.yaml"
    path.write_text(yaml.safe_dump({"catalogue": catalogue}))
    return path


def header(path: Path, ext: int | str = 0) -> fits.Header:
    return fits.getheader(path, ext)


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory) -> dict[str, Path]:
    """Overlays for the DES-Y3 HDF5 and the FITS catalogues of one simulated sky."""
    folder = tmp_path_factory.mktemp("catalogues")
    config = yaml.safe_load(TEST_CONFIG.read_text())
    desy3 = simulated_catalogue.write_desy3(folder, config)
    fcat = simulated_catalogue.write_fits(folder / "shear.fits", config)
    return {
        "desy3": overlay_file(folder, {"source": "desy3", "desy3": desy3}),
        "fits": overlay_file(folder, {"source": "fits", "fits": fcat}),
        "mock": overlay_file(folder, {"source": "mock"}),
    }


@pytest.fixture(scope="module")
def desy3_run(catalogues, tmp_path_factory) -> Path:
    """The DES-Y3 catalogue run from an empty results folder with no explicit target."""
    results = tmp_path_factory.mktemp("desy3") / "results"
    dry = snakemake(results, catalogues["desy3"], "-n")
    assert dry.returncode == 0, f"the DAG does not build:\n{dry.stdout[-3000:]}{dry.stderr[-3000:]}"
    run = snakemake(results, catalogues["desy3"])
    assert run.returncode == 0, f"snakemake failed:\n{run.stderr[-6000:]}"
    return results


def data_and_mock_patches(results: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for mock in sorted((results / "mocks" / "data").glob("patch_*.fits")):
        data = results / "data" / mock.name
        if data.exists():
            pairs.append((data, mock))
    return pairs


def test_desy3_catalogue_runs_to_the_mosaic(desy3_run):
    results = desy3_run
    for name in ("kappa_mean", "kappa_std", "coverage"):
        assert (results / "mosaic" / f"{name}.fits").is_file()
    # the data are the DES files', the truth-less real data stream has no truth folder
    data = sorted((results / "data").glob("patch_*.fits"))
    assert data and not (results / "truth").exists()
    h = header(data[0])
    assert h["SOURCE"] == "desy3" and h["STREAM"] == "data"
    assert h["CATALOG"].endswith("DESY3_metacal_v03-004.h5")
    # the metacal response (~0.7, no selection response) was measured and applied
    for b in range(1, 5):
        assert 0.65 < h[f"RESP{b}11"] < 0.75 and h[f"RSEL{b}11"] == 0.0


def test_desy3_data_patches_use_the_scaling_tuned_on_their_mocks(desy3_run):
    results = desy3_run
    scaling = results / "validation" / "scaling.fits"
    table = fits.getdata(scaling, 1)
    identity = check_same_catalogue([scaling, *sorted((results / "mocks" / "data").glob("*.fits"))])
    for post in sorted((results / "posterior").glob("patch_*.fits")):
        h = header(post)
        assert h["SCALED"]
        pairs = zip(table["t_bar"], table["sigma_t"], strict=True)
        for b, (t_bar, sigma_t) in enumerate(pairs, start=1):
            assert h[f"TBAR{b}"] == t_bar and h[f"SIGT{b}"] == sigma_t
        assert h["CATHASH"] == identity["CATHASH"]
    assert header(results / "mosaic" / "kappa_mean.fits", 1)["CATHASH"] == identity["CATHASH"]


def test_desy3_mocks_carry_the_data_mask_and_noise(desy3_run):
    pairs = data_and_mock_patches(desy3_run)
    assert pairs, "no validation mock on a data patch"
    for data, mock in pairs:
        assert header(mock)["STREAM"] == "mock" and header(mock)["MOCKSHAP"] == "rotated"
        with fits.open(data) as d, fits.open(mock) as m:
            np.testing.assert_array_equal(m["MASK"].data, d["MASK"].data)
            np.testing.assert_array_equal(m["NGAL"].data, d["NGAL"].data)
            observed = d["MASK"].data > 0
            ratio = m["SIGMA"].data[observed] / d["SIGMA"].data[observed]
            # rotation keeps |e| of each galaxy, so the noise is the data's to the small
            # change of |e| from the added shear: 5 % in the median is the bound
            assert abs(np.median(ratio) - 1) < 0.05, np.median(ratio)
            # ... while the shear itself is new: the mock is not the data
            assert not np.allclose(m["G1"].data[observed], d["G1"].data[observed])


def test_switching_the_source_rebuilds_and_never_pairs_catalogues(desy3_run, catalogues):
    """desy3 -> mock in the same results folder: every product descends from the mock."""
    results = desy3_run
    run = snakemake(results, catalogues["mock"])
    assert run.returncode == 0, f"snakemake failed after the switch:\n{run.stderr[-6000:]}"
    data = sorted((results / "data").glob("patch_*.fits"))
    identity = check_same_catalogue(data)
    assert identity["SOURCE"] == "mock"
    products = [
        *sorted((results / "mocks").glob("*/patch_*.fits")),
        *sorted((results / "mocks" / "baselines").glob("*/patch_*.fits")),
        *sorted((results / "posterior").glob("patch_*.fits")),
        *sorted((results / "baselines").glob("*/patch_*.fits")),
        *sorted((results / "validation" / "runs").glob("*/patch_*.fits")),
        results / "validation" / "scaling.fits",
    ]
    assert check_same_catalogue([data[0], *products]) == identity
    for name in ("kappa_mean", "ks_kappa", "wiener_kappa"):
        assert header(results / "mosaic" / f"{name}.fits", 1)["CATHASH"] == identity["CATHASH"]
    # nothing left to do: the switch rebuilt all that depends on the catalogue
    dry = snakemake(results, catalogues["mock"], "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]


def test_combining_two_catalogues_is_refused(tmp_path):
    """check_same_catalogue names both files; a product without provenance is refused."""
    paths = []
    for name, cathash in (("a", "0011"), ("b", "0011"), ("c", "ffee")):
        path = tmp_path / f"{name}.fits"
        hdr = fits.Header({"SOURCE": "fits", "CATALOG": "x.fits", "CATHASH": cathash})
        fits.PrimaryHDU(header=hdr).writeto(path)
        paths.append(path)
    assert check_same_catalogue(paths[:2])["CATHASH"] == "0011"
    with pytest.raises(ProductError, match=r"c\.fits was made from catalogue .*a\.fits"):
        check_same_catalogue(paths)
    bare = tmp_path / "bare.fits"
    fits.PrimaryHDU().writeto(bare)
    with pytest.raises(ProductError, match="bare.fits: no CATHASH"):
        check_same_catalogue([paths[0], bare])


# --------------------------------------------------------------------------- the shape model


def _flat_chunks(rng, n, n_chunks):
    """Galaxies in a 1 x 1 degree box at the equator, unit weights, random bins."""
    out = []
    for _ in range(n_chunks):
        out.append(
            GalaxyChunk(
                rng.uniform(-0.5, 0.5, n) % 360.0,
                rng.uniform(-0.5, 0.5, n),
                rng.normal(0, 0.25, n) + 0.03,
                rng.normal(0, 0.25, n) - 0.02,
                np.ones(n),
                rng.integers(0, 2, n),
            )
        )
    return out


def _constant_shear_model(seed, g1=0.05, g2=-0.03, nside=16):
    """A sky of constant healpy shear (g1, g2) in both bins: DES e = (g1, -g2)."""
    npix = 12 * nside**2
    gamma1 = np.full((2, npix), g1, np.float32)
    gamma2 = np.full((2, npix), g2, np.float32)
    return ShapeNoiseMock(gamma1, gamma2, None, seed)


def test_shape_noise_mock_rotates_noise_and_adds_the_sky(rng):
    chunks = _flat_chunks(rng, 20000, 3)
    model = _constant_shear_model(seed=5)
    e1 = np.concatenate([c.e1 for c in chunks])
    e2 = np.concatenate([c.e2 for c in chunks])
    out1, out2 = [], []
    for k, c in enumerate(chunks):
        rows = np.arange(len(c))
        a, b = model(k, c, rows, np.asarray(c.e1, float), np.asarray(c.e2, float))
        out1.append(a)
        out2.append(b)
    m1, m2 = np.concatenate(out1), np.concatenate(out2)
    # |g - sky| equals |e| galaxy by galaxy (a pure rotation), to float rounding
    np.testing.assert_allclose(np.hypot(m1 - 0.05, m2 - 0.03), np.hypot(e1, e2), rtol=1e-6)
    # the data's mean shear (0.03, -0.02) is gone and the sky's DES shear (0.05, +0.03) is
    # there: 60,000 galaxies of sigma 0.25 give a mean to 0.001 (1 sigma); 5 sigma bound
    assert abs(m1.mean() - 0.05) < 0.005 and abs(m2.mean() - 0.03) < 0.005
    # the angles are a function of (seed, chunk position) only: the same on a second pass,
    # and different for another seed
    again = model(1, chunks[1], np.arange(len(chunks[1])), chunks[1].e1, chunks[1].e2)
    np.testing.assert_array_equal(again[0], out1[1])
    rows = np.arange(len(chunks[1]))
    other = _constant_shear_model(seed=6)(1, chunks[1], rows, chunks[1].e1, chunks[1].e2)
    assert not np.allclose(other[0], out1[1])


def test_shape_noise_mock_pixelises_with_the_data_mask_in_any_number_of_passes(rng):
    """Masks and counts equal the data's; a tiny memory budget (one pass per patch group)
    gives the same maps as one pass, so the angles do not depend on the pass."""
    chunks = _flat_chunks(rng, 5000, 4)
    grid = PatchGrid(np.array([0.0, 0.3]), np.array([0.0, 0.1]), 8, 6.0)
    common = dict(e_max=1.0, calibration=ShearCalibration.identity(2))
    data = {k: maps for k, maps, _ in pixelise_catalogue(lambda: chunks, grid, 2, **common)}
    model = _constant_shear_model(seed=9)
    one = {
        k: maps
        for k, maps, _ in pixelise_catalogue(lambda: chunks, grid, 2, shapes=model, **common)
    }
    many = {
        k: maps
        for k, maps, _ in pixelise_catalogue(
            lambda: chunks, grid, 2, shapes=model, memory_mb=1e-3, **common
        )
    }
    for k in range(len(grid)):
        np.testing.assert_array_equal(one[k]["MASK"], data[k]["MASK"])
        np.testing.assert_array_equal(one[k]["NGAL"], data[k]["NGAL"])
        for name in ("G1", "G2", "SIGMA"):
            np.testing.assert_array_equal(many[k][name], one[k][name])
        observed = data[k]["MASK"] > 0
        ratio = np.median(one[k]["SIGMA"][observed] / data[k]["SIGMA"][observed])
        assert abs(ratio - 1) < 0.05, ratio
