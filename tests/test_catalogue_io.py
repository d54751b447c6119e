"""Tests of kappadiff.catalogue.io (DES-Y3 HDF5 and FITS readers/writers) and of the
catalogue stage end to end (mock catalogue -> pixelised patches with accounting)."""

from __future__ import annotations

import fitsio
import h5py
import healpy as hp
import numpy as np
import pytest
import yaml
from astropy.io import fits

from kappadiff.catalogue import SHEARED_SELECTIONS, CatalogueError, io, shear_calibration_from_sums
from kappadiff.products import ProductError, image_hdu, tan_header, write_fits, write_healpix

N_BINS = 4
#: The three files of a DES-Y3 catalogue, by the role the catalogue stage reads them in.
DESY3_ROLES = ("metacal", "index", "sompz")


def _des_columns(rng, n):
    cols = {
        "ra": rng.uniform(10, 20, n),
        "dec": rng.uniform(-30, -20, n),
        "e1": rng.normal(0, 0.3, n),
        "e2": rng.normal(0, 0.3, n),
        "weight": rng.uniform(0.5, 2, n),
        "bin": rng.integers(-1, N_BINS, n),
        "R11": rng.normal(0.7, 0.1, n),
        "R12": rng.normal(0.0, 0.02, n),
        "R21": rng.normal(0.0, 0.02, n),
        "R22": rng.normal(0.7, 0.1, n),
    }
    return cols


def _des_files(tmp_path, rng, n=3000):
    """A small catalogue in the exact DES-Y3 layout with distinct sheared selections."""
    cols = _des_columns(rng, n)
    sheared, select = {}, {"": np.sort(rng.choice(n, n * 3 // 4, replace=False))}
    for k, s in enumerate(SHEARED_SELECTIONS):
        # sheared catalogues: other weights and bins, and selections that shift <e>
        sh = dict(cols)
        sh["weight"] = cols["weight"] * rng.uniform(0.9, 1.1, n)
        sh["bin"] = np.where(rng.random(n) < 0.05, rng.integers(-1, N_BINS, n), cols["bin"])
        sheared[s] = sh
        comp = cols["e1"] if k < 2 else cols["e2"]
        sign = 1 if k % 2 == 0 else -1
        select[f"_{s}"] = np.flatnonzero(sign * comp > -0.4 + 0.1 * rng.random(n))
    files = io.DESY3Files(tmp_path / "mcal.h5", tmp_path / "index.h5", tmp_path / "sompz.h5")
    io.write_desy3_catalogue(files, cols, sheared, select, header={"TRUTH": "none"})
    return files, cols, sheared, select


def test_desy3_reader_and_selection_response(tmp_path, rng):
    files, cols, sheared, select = _des_files(tmp_path, rng)
    # the file layout is exactly the release's
    with h5py.File(files.metacal) as f:
        for name in ("ra", "dec", "e_1", "e_2", "R11", "R12", "R21", "R22", "weight"):
            assert f"catalog/unsheared/{name}" in f
        assert "catalog/sheared_2m/weight" in f
    with h5py.File(files.sompz) as f:
        assert "catalog/sompz/sheared_1p/bhat" in f
    chunks = list(io.iter_desy3_catalogue(files, chunk_size=700))
    assert len(chunks) == 4  # 2250 selected rows in chunks of 700
    rows = select[""]
    np.testing.assert_array_equal(np.concatenate([c.ra for c in chunks]), cols["ra"][rows])
    np.testing.assert_array_equal(np.concatenate([c.bin for c in chunks]), cols["bin"][rows])
    np.testing.assert_array_equal(
        np.concatenate([c.response[:, 0, 1] for c in chunks]), cols["R12"][rows]
    )
    # response by brute force on the whole arrays
    sums = io.desy3_response_sums(files, N_BINS, e_max=1.0, chunk_size=700)
    cal = shear_calibration_from_sums(sums, m=[0.01, 0.02, 0.03, 0.04], subtract_mean=True)
    e1, e2, w, b = cols["e1"], cols["e2"], cols["weight"], cols["bin"]
    for k in range(N_BINS):
        sel = rows[(b[rows] == k) & (e1[rows] ** 2 + e2[rows] ** 2 < 1)]
        r_gamma = np.array(
            [
                [
                    np.average(cols["R11"][sel], weights=w[sel]),
                    np.average(cols["R12"][sel], weights=w[sel]),
                ],
                [
                    np.average(cols["R21"][sel], weights=w[sel]),
                    np.average(cols["R22"][sel], weights=w[sel]),
                ],
            ]
        )
        mean = {}
        for s in SHEARED_SELECTIONS:
            r = select[f"_{s}"]
            r = r[sheared[s]["bin"][r] == k]
            ws = sheared[s]["weight"][r]
            mean[s] = np.array([np.average(e1[r], weights=ws), np.average(e2[r], weights=ws)])
        r_s = np.column_stack([(mean["1p"] - mean["1m"]) / 0.02, (mean["2p"] - mean["2m"]) / 0.02])
        # the selections shift <e> by O(0.05): R_S of order 1, measured to float64 rounding
        assert np.abs(r_s).max() > 0.5
        np.testing.assert_allclose(cal.selection[k], r_s, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(cal.response[k], r_gamma + r_s, rtol=1e-9)
        np.testing.assert_allclose(
            cal.mean_e[k],
            [np.average(e1[sel], weights=w[sel]), np.average(e2[sel], weights=w[sel])],
            rtol=1e-9,
        )


def test_desy3_reader_errors(tmp_path, rng):
    files, cols, sheared, select = _des_files(tmp_path, rng, n=200)
    # index out of range
    with h5py.File(files.index, "r+") as f:
        del f["index/select"]
        f["index/select"] = np.array([0, 5, 250, 300])
    with pytest.raises(CatalogueError, match=r"index.h5: 'index/select' has 2 row indices outside"):
        list(io.iter_desy3_catalogue(files))
    # empty selection
    with h5py.File(files.index, "r+") as f:
        del f["index/select"]
        f["index/select"] = np.zeros(0, dtype=np.int64)
    with pytest.raises(CatalogueError, match="'index/select' selects no galaxy"):
        list(io.iter_desy3_catalogue(files))
    # bins of another length
    with h5py.File(files.sompz, "r+") as f:
        del f["catalog/sompz/unsheared/bhat"]
        f["catalog/sompz/unsheared/bhat"] = np.zeros(199, dtype=np.int64)
    with pytest.raises(
        CatalogueError, match=r"sompz.h5: '/catalog/sompz/unsheared/bhat' has 199 rows"
    ):
        list(io.iter_desy3_catalogue(files))
    # a missing dataset
    with h5py.File(files.metacal, "r+") as f:
        del f["catalog/unsheared/R22"]
    with pytest.raises(CatalogueError, match=r"mcal.h5: no dataset 'catalog/unsheared/R22'"):
        list(io.iter_desy3_catalogue(files))


def test_desy3_sheared_bins_counted_over_the_selection(tmp_path, rng):
    files, cols, sheared, select = _des_files(tmp_path, rng, n=3000)
    bhat = sheared["1p"]["bin"].copy()
    rows = select["_1p"]
    bhat[rows[[0, 1, -3, -2, -1]]] = 9  # in the first and the last chunk of 700 rows
    sheared["1p"] = {**sheared["1p"], "bin": bhat}
    io.write_desy3_catalogue(files, cols, sheared, select)
    with pytest.raises(
        CatalogueError,
        match=r"sompz.h5: column 'catalog/sompz/sheared_1p/bhat' has 5 values outside -1\.\.3",
    ):
        io.desy3_response_sums(files, N_BINS, e_max=1.0, chunk_size=700)


def test_float_bin_column_of_a_fits_catalogue(tmp_path, rng):
    path = tmp_path / "cat.fits"
    data = _write_plain_fits(path, 1500, rng)
    zbin = data["ZBIN"].astype("f4")
    zbin[[10, 1200]] = 2.7
    fitsio.write(
        str(path),
        {"ZBIN": zbin, **{k: data[k] for k in COLMAP.values() if k != "ZBIN"}},
        clobber=True,
    )
    chunks = io.iter_fits_catalogue(path, COLMAP, chunk_size=1000)
    with pytest.raises(
        CatalogueError,
        match=r"cat.fits: column 'bin' has 2 values that are not integers \(e\.g\. \[2\.7",
    ):
        io.fits_response_sums(chunks, N_BINS, 1.0, str(path))


@pytest.mark.parametrize("size", [0, 1000, "half"])
def test_truncated_desy3_file_is_named(tmp_path, rng, size):
    # h5py's own message ("truncated file: eof = 1000 ...") names no file
    files, *_ = _des_files(tmp_path, rng, n=2000)
    with open(files.metacal, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2 if size == "half" else size)
    with pytest.raises(
        CatalogueError, match=r"mcal.h5: cannot open the DES-Y3 metacal file as HDF5 \("
    ):
        list(io.iter_desy3_catalogue(files))


def test_corrupt_desy3_chunk_names_file_and_dataset(tmp_path, rng):
    # the released files are chunked and compressed: a damaged chunk fails on reading
    files, cols, *_ = _des_files(tmp_path, rng, n=2000)
    with h5py.File(files.metacal, "r+") as f:
        del f["catalog/unsheared/e_2"]
        ds = f.create_dataset(
            "catalog/unsheared/e_2", data=cols["e2"], chunks=(500,), compression="gzip"
        )
        offset = ds.id.get_chunk_info(1).byte_offset
    with open(files.metacal, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    with pytest.raises(CatalogueError, match=r"mcal.h5: cannot read '/catalog/unsheared/e_2' \("):
        list(io.iter_desy3_catalogue(files))


def _write_plain_fits(path, n, rng, ra_scale=1.0, **extra):
    data = np.zeros(
        n,
        dtype=[
            ("RA_DEG", "f8"),
            ("DEC_DEG", "f8"),
            ("G1", "f4"),
            ("G2", "f4"),
            ("ZBIN", "i4"),
            ("W", "f4"),
        ],
    )
    data["RA_DEG"] = rng.uniform(10, 20, n) * ra_scale
    data["DEC_DEG"] = rng.uniform(-30, -20, n) * ra_scale
    data["G1"], data["G2"] = rng.normal(0, 0.2, (2, n))
    data["ZBIN"] = rng.integers(0, 4, n)
    data["W"] = 1.5
    fitsio.write(str(path), data, clobber=True)
    return data


COLMAP = {"ra": "RA_DEG", "dec": "DEC_DEG", "e1": "G1", "e2": "G2", "bin": "ZBIN", "weight": "W"}


def test_fits_reader_column_map_chunks_and_errors(tmp_path, rng):
    path = tmp_path / "cat.fits"
    data = _write_plain_fits(path, 2500, rng)
    chunks = list(io.iter_fits_catalogue(path, COLMAP, chunk_size=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    np.testing.assert_array_equal(np.concatenate([c.dec for c in chunks]), data["DEC_DEG"])
    np.testing.assert_array_equal(np.concatenate([c.bin for c in chunks]), data["ZBIN"])
    assert np.all(chunks[0].weight == 1.5)
    no_w = list(io.iter_fits_catalogue(path, {**COLMAP, "weight": None}, chunk_size=5000))
    assert np.all(no_w[0].weight == 1.0)
    with pytest.raises(CatalogueError, match=r"cat.fits: column\(s\) e1 -> 'E1' not in the table"):
        list(io.iter_fits_catalogue(path, {**COLMAP, "e1": "E1"}))
    # radians: refused in degrees, converted when declared
    rad = tmp_path / "rad.fits"
    _write_plain_fits(rad, 500, rng, ra_scale=np.pi / 180)
    with pytest.raises(
        CatalogueError, match=r"rad.fits columns 'RA_DEG', 'DEC_DEG': RA/Dec look like radians"
    ):
        list(io.iter_fits_catalogue(rad, COLMAP))
    conv = next(io.iter_fits_catalogue(rad, COLMAP, radec_units="rad"))
    assert 10 <= conv.ra.min() and conv.ra.max() <= 20
    empty = tmp_path / "empty.fits"
    _write_plain_fits(empty, 0, rng)
    with pytest.raises(CatalogueError, match="empty.fits: the catalogue table is empty"):
        list(io.iter_fits_catalogue(empty, COLMAP))


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (0, r"cannot open the catalogue as FITS \("),
        ("half", r"cannot read rows \d+\.\.\d+ of columns \['RA_DEG', 'DEC_DEG', "),
    ],
)
def test_truncated_fits_catalogue_is_named(tmp_path, rng, size, message):
    # fitsio names the file in some of its messages, not in a read past the end of the data
    path = tmp_path / "cut.fits"
    _write_plain_fits(path, 2500, rng)
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2 if size == "half" else size)
    with pytest.raises(CatalogueError, match=f"cut.fits: {message}"):
        list(io.iter_fits_catalogue(path, COLMAP, chunk_size=1000))


def test_fits_catalogue_writer_streams_and_keeps_truth(tmp_path, rng):
    path = tmp_path / "mock.fits"
    parts = [
        {k: rng.random(n) for k in ("ra", "dec", "e1", "e2", "weight")} | {"bin": np.full(n, 2)}
        for n in (10, 0, 25)
    ]
    n = io.write_fits_catalogue(path, parts, header={"TRUTH": "results/sims/sim001/kappa.fits"})
    assert n == 35
    with fits.open(path, checksum=True) as hdul:
        assert hdul["CATALOGUE"].header["TRUTH"] == "results/sims/sim001/kappa.fits"
        assert hdul["CATALOGUE"].header["NGAL"] == 35
    back = np.concatenate([c.e2 for c in io.iter_fits_catalogue(path, chunk_size=7)])
    np.testing.assert_array_equal(back, np.concatenate([p["e2"] for p in parts]))


# --------------------------------------------------------------------------- stage end to end


@pytest.fixture
def test_config(repo_root, tmp_path):
    from snakemake.utils import validate

    config = yaml.safe_load(open(repo_root / "config" / "test.yaml"))
    validate(config, str(repo_root / "workflow" / "schemas" / "config.schema.yaml"))
    config["results"] = str(tmp_path / "results")
    return config


@pytest.mark.parametrize("mock_format", ["desy3", "fits"])
def test_mock_and_pixelise_stage(test_config, tmp_path, mock_format):
    from kappadiff.stages import catalogue as stage
    from kappadiff.stages.layout import write_footprint_layout

    config = test_config
    config["catalogue"]["mock_format"] = mock_format
    res = tmp_path / "results"
    layout = res / "layout" / "footprint.fits"
    write_footprint_layout(config, layout)
    nside = config["sims"]["nside"]
    rng = np.random.default_rng(3)
    kappa = np.array(
        [
            hp.smoothing(rng.normal(0, 0.02, hp.nside2npix(nside)), fwhm=np.radians(1.0))
            for _ in range(4)
        ]
    )
    kappa_path = res / "sims" / "sim001" / "kappa.fits"
    write_healpix(kappa_path, kappa)
    ids = [0, 1]
    # the files the rules give the stage (workflow/rules/common.smk: mock_catalogue_files)
    outputs = {"fits": str(res / "catalogue" / "mock.fits")}
    if mock_format == "desy3":
        outputs.update({k: str(res / "catalogue" / f"mock_{k}.h5") for k in DESY3_ROLES})
    stage.make_mock_catalogue(config, kappa_path, layout, ids, outputs)
    with fits.open(outputs["fits"]) as hdul:
        assert hdul[1].header["TRUTH"] == str(kappa_path)
        n_mock = hdul[1].header["NGAL"]
    # the catalogue pixelise reads (catalogue_files): the DES-Y3 triple, or the FITS table
    files = {k: outputs[k] for k in DESY3_ROLES} if mock_format == "desy3" else outputs
    inputs = {**files, "layout": str(layout), "kappa": [str(kappa_path)]}
    data = [str(res / "data" / f"patch_{i:04d}.fits") for i in ids]
    truth = [str(res / "truth" / f"patch_{i:04d}.fits") for i in ids]
    stage.pixelise(config, inputs, ids, data, truth)
    for path, tpath in zip(data, truth, strict=True):
        with fits.open(path, checksum=True) as hdul:
            h = hdul[0].header
            assert h["NREAD"] == n_mock
            rejected = sum(h[k] for k in ("REJNAN", "REJBIN", "REJWGT", "REJELL", "REJOUT"))
            assert h["NREAD"] == h["NUSED"] + rejected  # exact reconciliation in the header
            assert h["REJOUT"] == 0  # the mock only fills the patches it was made for
            assert h["TRUTH"] == str(kappa_path)
            # the DES-Y3 layout is read with the DES reader (the FITS copy is not)
            assert h["CATALOG"] == files.get("metacal", outputs["fits"])
            shapes = {hdu.name: hdu.data.shape for hdu in hdul[1:]}
            assert shapes == {k: (4, 16, 16) for k in ("G1", "G2", "SIGMA", "MASK", "NGAL")}
            assert hdul["G1"].header["CDELT1"] < 0 and hdul["G1"].header["CTYPE1"] == "RA---TAN"
            mask = hdul["MASK"].data
            assert mask.sum() > 0
            assert np.all(hdul["SIGMA"].data[mask == 0] == 0)
            assert np.all(hdul["SIGMA"].data[mask == 1] > 0)
        with fits.open(tpath) as hdul:
            assert hdul["KAPPA"].data.shape == (4, 16, 16)
    # the occupancy footprint of the same catalogue covers the patches it was made for
    out = res / "catalogue" / "footprint.fits"
    stage.catalogue_footprint(config, files, out)
    occ = hp.read_map(out)
    assert occ.sum() == n_mock - h["REJNAN"] - h["REJBIN"] - h["REJWGT"] - h["REJELL"]


def _fits_catalogue_stage(config, tmp_path):
    """The test layout and a FITS-catalogue configuration; returns (config, layout, table)."""
    from kappadiff.products import read_table
    from kappadiff.stages.layout import write_footprint_layout

    layout = tmp_path / "results" / "layout" / "footprint.fits"
    write_footprint_layout(config, layout)
    config["catalogue"]["source"] = "fits"
    config["catalogue"]["fits"]["path"] = str(tmp_path / "cat.fits")
    return config, layout, read_table(layout)[0]


def _galaxies_near(table, ids, rng, n=2000, half_deg=1.0):
    """Catalogue columns of ``n`` galaxies a patch within ``half_deg`` of the patch centres."""
    ra0, dec0 = np.repeat(table["ra"][ids], n), np.repeat(table["dec"][ids], n)
    m = ra0.size
    return {
        "ra": ra0 + rng.uniform(-half_deg, half_deg, m) / np.cos(np.radians(dec0)),
        "dec": dec0 + rng.uniform(-half_deg, half_deg, m),
        "e1": rng.normal(0, 0.2, m),
        "e2": rng.normal(0, 0.2, m),
        "weight": np.ones(m),
        "bin": rng.integers(0, N_BINS, m),
    }


def _pixelise_fits(config, layout, columns, ids, tmp_path):
    from kappadiff.stages import catalogue as stage

    io.write_fits_catalogue(config["catalogue"]["fits"]["path"], [columns])
    data = [str(tmp_path / "results" / "data" / f"patch_{i:04d}.fits") for i in ids]
    inputs = {"fits": config["catalogue"]["fits"]["path"], "layout": str(layout)}
    stage.pixelise(config, inputs, ids, data)
    return data


@pytest.mark.parametrize("case", ["elsewhere", "radians-declared"])
def test_pixelise_refuses_a_catalogue_in_no_patch(test_config, tmp_path, rng, case):
    # a catalogue 90 deg away, or in degrees declared as radians, put no galaxy in any
    # patch: pixelise wrote every patch fully masked (NUSED = 0) with exit 0
    config, layout, table = _fits_catalogue_stage(test_config, tmp_path)
    cols = _galaxies_near(table, [0, 1], rng)
    if case == "elsewhere":
        cols["ra"] = (cols["ra"] + 90.0) % 360.0
        cause = r"its 4000 galaxies span RA .* deg: check that layout.footprint is the catalogue"
    else:
        config["catalogue"]["fits"]["radec_units"] = "rad"
        cause = r"its 4000 galaxies span .* deg: beyond \|Dec\| <= 90 deg, so not degrees: check "
        cause += r"catalogue.fits.radec_units"
    centre = f"patch 0 \\(RA {table['ra'][0]:.1f}, Dec {table['dec'][0]:.1f}\\)"
    with pytest.raises(
        CatalogueError,
        match=rf"cat.fits: no galaxy falls in any of the 2 configured patches .*{centre}.*; "
        + cause,
    ):
        _pixelise_fits(config, layout, cols, [0, 1], tmp_path)
    assert not (tmp_path / "results" / "data").exists()  # stopped before any patch


def test_pixelise_names_an_empty_patch_among_others(test_config, tmp_path, rng):
    config, layout, table = _fits_catalogue_stage(test_config, tmp_path)
    # the patch farthest from patch 0 gets no galaxy
    v = hp.ang2vec(table["ra"], table["dec"], lonlat=True)
    far = int(np.argmin(v @ v[0]))
    with pytest.raises(
        CatalogueError,
        match=rf"data patches \[{far}\] hold no observed pixel in any bin: no galaxy falls in "
        rf"\[{far}\] .*\. patches \[0\] have data",
    ):
        _pixelise_fits(config, layout, _galaxies_near(table, [0], rng), [0, far], tmp_path)
    data = tmp_path / "results" / "data"
    assert (data / "patch_0000.fits").exists() and not (data / f"patch_{far:04d}.fits").exists()


def test_pixelise_counts_duplicate_rows(test_config, tmp_path, rng):
    config, layout, table = _fits_catalogue_stage(test_config, tmp_path)
    cols = _galaxies_near(table, [0, 1], rng)
    n = cols["ra"].size
    far = _galaxies_near(table, [0], rng, n=3)
    far["ra"] = (far["ra"] + 90.0) % 360.0  # outside every patch
    # 10 used rows repeated (one of them twice), and 3 outside rows repeated: 11 duplicates used
    again = np.r_[np.arange(10), 0]
    cols = {
        k: np.concatenate([cols[k], far[k], cols[k][again], far[k]]).astype(cols[k].dtype)
        for k in cols
    }
    # only the weight differs: still the same galaxy (same ra, dec, e1, e2)
    cols["weight"][-4] = 2.0
    data = _pixelise_fits(config, layout, cols, [0, 1], tmp_path)
    h = fits.getheader(data[0])
    assert h["NDUP"] == 11
    assert h["NREAD"] == n + 17 and h["REJOUT"] == 6 and h["NUSED"] == n + 11
    rejected = sum(h[k] for k in ("REJNAN", "REJBIN", "REJWGT", "REJELL", "REJOUT"))
    assert h["NREAD"] == h["NUSED"] + rejected
    config["catalogue"]["duplicates"] = "error"
    with pytest.raises(
        CatalogueError,
        match=rf"cat.fits: 11 duplicate rows: 11 of the {n + 11} galaxies used repeat an earlier",
    ):
        _pixelise_fits(config, layout, cols, [0, 1], tmp_path)


# --------------------------------------------------------------------------- data patches


def _data_patch(path, **override):
    """A 2-bin, 8 x 8 data patch at 4'/pixel, masked in one corner; ``override`` replaces HDUs."""
    shape = (2, 8, 8)
    mask = np.ones(shape, np.uint8)
    mask[:, :2, :3] = 0
    sigma = np.where(mask > 0, 0.05, 0.0)
    g1 = np.where(mask > 0, 0.01, 0.0)
    images = {"G1": g1, "G2": -g1, "SIGMA": sigma, "MASK": mask, "NGAL": 3 * mask}
    images.update(override)
    write_fits(path, [image_hdu(k, v, tan_header(30.0, -20.0, 8, 4.0)) for k, v in images.items()])


def test_read_data_patch(tmp_path):
    path = tmp_path / "patch_0007.fits"
    _data_patch(path)
    images, wcs = io.read_data_patch(path, 4.0)
    assert set(images) == set(io.DATA_HDUS)
    assert all(a.dtype == np.float64 and a.shape == (2, 8, 8) for a in images.values())
    assert images["MASK"].sum() == 2 * (64 - 6)
    assert abs(wcs["CDELT2"]) * 60 == pytest.approx(4.0, rel=1e-9)  # float64 card round trip
    io.read_data_patch(path)  # no scale given: not checked
    with pytest.raises(ProductError, match=r"patch_0007.fits: pixel scale 4 arcmin .* = 2"):
        io.read_data_patch(path, 2.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # the count of bad observed pixels and the HDU are named
        ({"SIGMA": np.zeros((2, 8, 8))}, r"HDU SIGMA is not > 0 .* in 116 observed pixels"),
        ({"G2": np.full((2, 8, 8), np.nan)}, r"HDU G2 has 116 non-finite observed pixels"),
        ({"MASK": np.full((2, 8, 8), 2, np.uint8)}, r"HDU MASK has 128 values other than 0"),
        ({"G1": np.zeros((2, 8, 7))}, r"HDU G2 has shape \(2, 8, 8\), G1 has \(2, 8, 7\)"),
    ],
)
def test_read_data_patch_refuses_bad_patches(tmp_path, override, message):
    path = tmp_path / "patch_0003.fits"
    _data_patch(path, **override)
    with pytest.raises(ProductError, match="patch_0003.fits: " + message):
        io.read_data_patch(path)


def test_read_data_patch_names_a_missing_hdu(tmp_path):
    path = tmp_path / "patch_0004.fits"
    wcs = tan_header(30.0, -20.0, 8, 4.0)
    write_fits(path, [image_hdu(k, np.zeros((1, 8, 8)), wcs) for k in ("G1", "G2", "MASK")])
    with pytest.raises(
        ProductError, match=r"patch_0004.fits: no HDU \['SIGMA'\] \(found \['G1', 'G2', 'MASK'\]\)"
    ):
        io.read_data_patch(path)
