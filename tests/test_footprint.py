"""Survey footprints: the DES round-19 polygon, polygon files, HEALPix mask files, layouts."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
import yaml

from kappadiff import footprint
from kappadiff.products import read_table
from kappadiff.sphere import separated_interior_patches
from kappadiff.stages.layout import (
    data_patch_ids,
    footprint_layout_from_config,
    footprint_patch_ids,
    mock_catalogue_patch_ids,
    validation_patch_ids,
    write_footprint_layout,
)


def _config(repo_root, name="test.yaml"):
    return yaml.safe_load((repo_root / "config" / name).read_text())


def _at(mask, ra, dec):
    return mask[hp.ang2pix(hp.npix2nside(mask.size), ra, dec, lonlat=True)]


def test_des_polygon_is_read_from_skyproj():
    path = footprint.des_polygon_path()
    assert "skyproj" in str(path) and path.name == "des-round19-poly.txt"
    (poly,) = footprint.read_polygon(path)
    ra, dec = poly
    assert len(ra) > 500
    # RA written continuously across 0 (-60 .. 99 deg), all in the south
    assert ra.min() < 0 < ra.max() and dec.max() < 10


def test_des_mask_area_and_landmarks():
    nside = 128
    mask = footprint.footprint_mask("des", nside)
    area = mask.sum() * hp.nside2pixarea(nside, degrees=True)
    # The round-19 wide-field polygon encloses ~5,000 deg^2 (DES-Y3 keeps 4,143 deg^2 of
    # it after masking); 1 % absorbs the 27' rasterisation of the 1 deg-step outline.
    assert area == pytest.approx(5085, rel=0.01)
    # inside: Stripe 82 at RA 0, the SPT area on both sides of RA 0; outside: north, RA 180
    for ra, dec in [(0.0, 0.0), (350.0, -55.0), (30.0, -40.0), (70.0, -50.0)]:
        assert _at(mask, ra, dec), (ra, dec)
    for ra, dec in [(180.0, 0.0), (300.0, -50.0), (30.0, 30.0)]:
        assert not _at(mask, ra, dec), (ra, dec)


def test_polygon_across_ra_zero_written_either_way(tmp_path):
    square = np.array([[-10, -20], [10, -20], [10, -5], [-10, -5]], dtype=float)
    wrapped = square.copy()
    wrapped[:, 0] %= 360.0  # 350 .. 10 written as 350 and 10
    a = footprint.polygon_mask([(square[:, 0], square[:, 1])], 64)
    b = footprint.polygon_mask([(wrapped[:, 0], wrapped[:, 1])], 64)
    np.testing.assert_array_equal(a, b)
    assert _at(a, 359.0, -10.0) and _at(a, 1.0, -10.0) and not _at(a, 15.0, -10.0)
    # and through the text file reader, with two polygons named by a third column
    rows = np.vstack(
        [
            np.column_stack([wrapped, np.zeros(4)]),
            np.column_stack([[100, 110, 110, 100], [10, 10, 20, 20], np.ones(4)]),
        ]
    )
    path = tmp_path / "poly.txt"
    np.savetxt(path, rows, header="ra dec poly")
    mask = footprint.footprint_mask(str(path), 64)
    assert _at(mask, 0.0, -10.0) and _at(mask, 105.0, 15.0) and not _at(mask, 50.0, 0.0)


def test_healpix_mask_file_any_ordering_and_nside(tmp_path):
    nside = 64
    ra, dec = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
    ring = ((ra < 30) | (ra > 330)) & (dec < -20) & (dec > -50)
    path = tmp_path / "mask.fits"
    hp.write_map(path, hp.reorder(ring.astype(np.float32), r2n=True), nest=True, dtype=np.float32)
    np.testing.assert_array_equal(footprint.read_healpix_mask(path), ring)
    np.testing.assert_array_equal(footprint.footprint_mask(str(path), nside), ring)
    coarse = footprint.footprint_mask(str(path), 16)
    # degraded: a coarse pixel is in when more than half of its 16 fine pixels are
    expected = hp.ud_grade(ring.astype(float), 16) > 0.5
    np.testing.assert_array_equal(coarse, expected)


def test_bad_footprint_files_are_named(tmp_path):
    with pytest.raises(footprint.FootprintError, match="missing.txt.*not found"):
        footprint.footprint_mask(str(tmp_path / "missing.txt"), 16)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0\n1 1\n")
    with pytest.raises(footprint.FootprintError, match="bad.txt.*2 vertices"):
        footprint.read_polygon(bad)
    bad.write_text("0 0\n1 95\n2 0\n")
    with pytest.raises(footprint.FootprintError, match="bad.txt.*1 vertices with \\|dec\\| > 90"):
        footprint.read_polygon(bad)
    empty = tmp_path / "empty.fits"
    hp.write_map(empty, np.zeros(hp.nside2npix(8)))
    with pytest.raises(footprint.FootprintError, match="empty.fits.*no pixel"):
        footprint.read_healpix_mask(empty)


def test_des_footprint_layout_has_about_410_patches(tmp_path, repo_root):
    config = _config(repo_root, "config.yaml")
    ids = footprint_patch_ids(config)
    # The paper reconstructs ~410 DES-Y3 patches; 3.5 deg spacing, >= 50 % coverage gives
    # 411 (416 with the paper-scale 7' rasterisation).
    assert 400 <= len(ids) <= 420
    write_footprint_layout(config, tmp_path / "footprint.fits")
    table, header = read_table(tmp_path / "footprint.fits")
    np.testing.assert_array_equal(table["id"], ids)
    assert np.all(table["coverage"] >= 0.5) and header["SPACING"] == 3.5
    # the layout crosses RA = 0 without a seam: patches at RA 0 and on both sides of it
    ra = table["ra"]
    assert np.any(ra == 0.0) and np.any(ra > 350) and np.any((ra > 0) & (ra < 10))
    # the default mock patches are interior and no two overlap (independent truths): centres
    # farther apart than the patch diagonal, which bounds any two overlapping patches
    mocks = config["validation"]["patches"]
    assert len(set(mocks)) == len(mocks) and set(config["validation"]["search_patches"]) <= set(
        mocks
    )
    assert np.array_equal(table["id"], np.arange(len(ids)))  # row = patch id
    assert np.all(table["coverage"][mocks] == 1.0)
    v = hp.ang2vec(table["ra"][mocks], table["dec"][mocks], lonlat=True)
    sep = np.degrees(np.arccos(np.clip(v @ v.T, -1.0, 1.0)))[np.triu_indices(len(mocks), 1)]
    assert sep.min() > np.sqrt(2) * config["layout"]["patch_size_deg"], sep.min()
    assert data_patch_ids(config) == config["sampling"]["patches"]
    assert data_patch_ids(dict(config, sampling=dict(config["sampling"], patches="all"))) == ids
    with pytest.raises(ValueError, match="sampling.patches: ids \\[9999\\]"):
        data_patch_ids(dict(config, sampling=dict(config["sampling"], patches=[0, 9999])))
    # a mock catalogue covers the data and the validation patches, once, in order; the
    # validation mocks are their own list, whatever the catalogue
    mock = dict(config, sampling=dict(config["sampling"], patches=[7, 3]))
    mock["validation"] = dict(config["validation"], patches=[3, 1])
    assert mock_catalogue_patch_ids(mock) == [1, 3, 7]
    assert validation_patch_ids(mock) == [3, 1]
    mock["validation"] = dict(mock["validation"], patches=[9999])
    # an id outside the layout: the message gives the valid range and the interior,
    # non-overlapping patches to choose from
    interior = separated_interior_patches(
        table["ra"], table["dec"], table["coverage"], config["layout"]["patch_size_deg"]
    )
    message = (
        rf"validation.patches: ids \[9999\] are not in the {len(ids)}-patch layout .* "
        rf"valid ids are 0..{len(ids) - 1}; interior patches that do not overlap .*"
        rf"\[{interior[0]}, {interior[1]},"
    )
    with pytest.raises(ValueError, match=message):
        validation_patch_ids(mock)
    with pytest.raises(ValueError, match="validation.patches: ids \\[9999\\]"):
        mock_catalogue_patch_ids(mock)


def test_separated_interior_patches_are_full_and_apart(repo_root):
    """Every patch kept is inside the footprint and farther than the patch diagonal from
    every other kept; every full patch left out is within a diagonal of a kept one."""
    config = _config(repo_root, "config.yaml")
    ra, dec, coverage = footprint_layout_from_config(config)
    size = config["layout"]["patch_size_deg"]
    kept = separated_interior_patches(ra, dec, coverage, size)
    assert len(kept) >= 60  # 82 on the DES layout at 3.5 deg spacing (docs/validation.md)
    v = hp.ang2vec(ra, dec, lonlat=True)
    sep = np.degrees(np.arccos(np.clip(v @ v.T, -1.0, 1.0)))
    assert np.all(coverage[kept] == 1.0)
    pairs = sep[np.ix_(kept, kept)][np.triu_indices(len(kept), 1)]
    assert pairs.min() > np.sqrt(2) * size
    left = np.setdiff1d(np.flatnonzero(coverage == 1.0), kept)
    assert np.all(sep[np.ix_(left, kept)].min(axis=1) <= np.sqrt(2) * size)
