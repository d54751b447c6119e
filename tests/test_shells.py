"""Readers of PKDGRAV3 lightcone shells, on small synthetic files in the released layouts."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
import yaml

from kappadiff import shells, sims
from kappadiff.products import ProductError, read_healpix
from kappadiff.stages.sims import make_tomography

NSIDE = 16
# near/far redshifts of the synthetic steps; step numbers grow with time (decreasing z)
Z_STEPS = {100: (0.0, 0.25), 99: (0.25, 0.55), 98: (0.55, 0.9), 97: (0.9, 1.4), 96: (1.4, 2.0)}


def _counts(rng, nside=NSIDE, mean=50.0):
    return rng.poisson(mean, size=12 * nside**2).astype(np.float32)


def _write_control_par(directory, **extra):
    text = "\n".join(
        [
            "# PKDGRAV3 parameter file (synthetic)",
            "import math",
            'achOutName = "run"',
            "nSteps = 100",
            "nGrid = 64",
            "dBoxSize = 1250.0  # Mpc/h",
            "h = 0.7",
            "dOmega0 = 0.3",
            "dLambda = 1.0 - dOmega0",
            "dSigma8 = 0.8",
            "dRedFrom = 49.0",
            "dTheta = 0.7 * math.sqrt(1.0)",
            f"nSideHealpix = {extra.pop('nside', NSIDE)}",
            *(f"{k} = {v!r}" for k, v in extra.items()),
        ]
    )
    (directory / "control.par").write_text(text + "\n")


def _write_z_values(directory, steps=Z_STEPS, h=0.7):
    """The released z_values.txt: CSV with comoving distances in Mpc/h."""
    lines = [
        "# Step,z_far,z_near,delta_z,cmd_far(Mpc/h),cmd_near(Mpc/h),delta_cmd(Mpc/h),"
        "cmd/box_far,cmd/box_near,delta_cmd/box"
    ]
    for step in sorted(steps):
        near, far = steps[step]
        cmd_far, cmd_near = 3000.0 * far * h, 3000.0 * near * h  # only recorded, not used
        lines.append(
            f"{step},{far},{near},{far - near},{cmd_far},{cmd_near},{cmd_far - cmd_near},"
            f"{cmd_far / 1250},{cmd_near / 1250},{(cmd_far - cmd_near) / 1250}"
        )
    (directory / "z_values.txt").write_text("\n".join(lines) + "\n")


def _gowerstreet(tmp_path, rng, steps=Z_STEPS, z_values=True):
    directory = tmp_path / "sim00001"
    directory.mkdir()
    _write_control_par(directory)
    maps = {}
    for step in steps:
        maps[step] = _counts(rng)
        np.save(directory / f"run.{step:05d}.lightcone.npy", maps[step])
    if z_values:
        _write_z_values(directory, steps)
    return directory, maps


def test_control_par_is_parsed_without_executing_it(tmp_path):
    _write_control_par(tmp_path, dExtra=2.5)
    par = shells.read_control_par(tmp_path / "control.par")
    assert par["achOutName"] == "run" and par["nSteps"] == 100
    assert par["dLambda"] == pytest.approx(0.7) and par["dTheta"] == pytest.approx(0.7)
    assert par["dExtra"] == 2.5 and par["nSideHealpix"] == NSIDE
    (tmp_path / "control.par").write_text("import os\nx = os.system('true')\n")
    with pytest.raises(shells.ShellError, match="control.par, line 2: unsupported"):
        shells.read_control_par(tmp_path / "control.par")


def test_gowerstreet_shells_from_z_values(tmp_path, rng):
    directory, maps = _gowerstreet(tmp_path, rng)
    shell_set = shells.gowerstreet_shells(directory)
    np.testing.assert_allclose(shell_set.z_edges, [0.0, 0.25, 0.55, 0.9, 1.4, 2.0])
    assert shell_set.nside == NSIDE and shell_set.n_shell == 5
    assert shell_set.files[0].endswith("run.00100.lightcone.npy")
    deltas = dict(shell_set.deltas(NSIDE))
    for s, step in enumerate(sorted(Z_STEPS, reverse=True)):
        counts = maps[step].astype(float)
        # exact arithmetic of δ = N / N̄ − 1, float64
        np.testing.assert_allclose(deltas[s], counts / counts.mean() - 1.0, rtol=1e-12)
        assert abs(deltas[s].mean()) < 1e-12


def test_gowerstreet_zmax_skips_far_shells_and_nside_is_changed(tmp_path, rng):
    directory, maps = _gowerstreet(tmp_path, rng)
    shell_set = shells.gowerstreet_shells(directory, zmax=1.0)
    np.testing.assert_allclose(shell_set.z_edges, [0.0, 0.25, 0.55, 0.9, 1.4])
    deltas = dict(shell_set.deltas(NSIDE // 2))
    counts = maps[100].astype(float)
    degraded = hp.ud_grade(counts / counts.mean() - 1.0, NSIDE // 2)
    # degrading δ averages 4 pixels: the same as δ of the summed counts, to float64 rounding
    np.testing.assert_allclose(deltas[0], degraded, rtol=1e-12, atol=1e-12)
    summed = hp.ud_grade(counts, NSIDE // 2, power=-2)
    np.testing.assert_allclose(deltas[0], summed / summed.mean() - 1.0, atol=1e-12)
    upgraded = dict(shell_set.deltas(2 * NSIDE))[0]
    assert upgraded.size == 12 * (2 * NSIDE) ** 2
    np.testing.assert_allclose(upgraded.mean(), 0.0, atol=1e-12)


def test_gowerstreet_redshifts_from_the_pkdgrav_log(tmp_path, rng):
    steps = {3: (0.0, 0.3), 2: (0.3, 0.8)}
    directory, _ = _gowerstreet(tmp_path, rng, steps=steps, z_values=False)
    par = (directory / "control.par").read_text().replace("nSteps = 100", "nSteps = 3")
    (directory / "control.par").write_text(par)
    # PKDGRAV3 log: one row per step end (0..nSteps), redshift in the second column
    rows = [(0, 1.5), (1, 0.8), (2, 0.3), (3, 1e-16)]
    np.savetxt(directory / "run.log", [(s, z, 0.1, 0.2) for s, z in rows])
    shell_set = shells.gowerstreet_shells(directory)
    np.testing.assert_allclose(shell_set.z_edges, [0.0, 0.3, 0.8])


def test_gowerstreet_without_redshift_information(tmp_path, rng):
    directory, _ = _gowerstreet(tmp_path, rng, z_values=False)
    with pytest.raises(shells.ShellError, match="missing redshift information") as err:
        shells.gowerstreet_shells(directory)
    assert str(directory) in str(err.value)
    _write_z_values(directory, {k: v for k, v in Z_STEPS.items() if k != 98})
    with pytest.raises(shells.ShellError, match="missing redshift information for step 98"):
        shells.gowerstreet_shells(directory)


def test_gowerstreet_mixed_nside_names_the_file(tmp_path, rng):
    directory, _ = _gowerstreet(tmp_path, rng)
    np.save(directory / "run.00098.lightcone.npy", _counts(rng, nside=2 * NSIDE))
    with pytest.raises(shells.ShellError, match="mixed nside") as err:
        shells.gowerstreet_shells(directory)
    assert "run.00098.lightcone.npy" in str(err.value)


def test_truncated_shell_file_is_named(tmp_path, rng):
    """A lightcone .npy cut short is reported with its name and both sizes when indexed
    (np.load says only "mmap length is greater than file size")."""
    directory, _ = _gowerstreet(tmp_path, rng)
    path = directory / "run.00098.lightcone.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ProductError, match=r"run\.00098\.lightcone\.npy.*1000 bytes"):
        shells.gowerstreet_shells(directory)


def test_zero_count_shell_names_the_file(tmp_path, rng):
    directory, _ = _gowerstreet(tmp_path, rng)
    np.save(directory / "run.00099.lightcone.npy", np.zeros(12 * NSIDE**2, np.float32))
    shell_set = shells.gowerstreet_shells(directory)
    with pytest.raises(shells.ShellError, match="zero everywhere") as err:
        list(shell_set.deltas(NSIDE))
    assert "run.00099.lightcone.npy" in str(err.value)


def _cosmogrid(path, rng, z_edges=(0.0, 0.3, 0.7, 1.2, 2.0), fields=None, compressed=True):
    z_edges = np.asarray(z_edges)
    n = len(z_edges) - 1
    fields = fields or shells.COSMOGRID_SHELL_FIELDS
    info = np.zeros(n, dtype=[(f, "<f4") for f in fields])
    for f in fields:
        info[f] = {
            "lower_z": z_edges[:-1],
            "upper_z": z_edges[1:],
            "lower_com": 3000.0 * z_edges[:-1],
            "upper_com": 3000.0 * z_edges[1:],
            "shell_com": 1500.0 * (z_edges[:-1] + z_edges[1:]),
        }[f]
    counts = np.stack([_counts(rng) for _ in range(n)]).astype(np.uint16)
    (np.savez_compressed if compressed else np.savez)(path, shells=counts, shell_info=info)
    return counts


@pytest.mark.parametrize("compressed", [True, False])
def test_cosmogrid_shells(tmp_path, rng, compressed):
    path = tmp_path / "compressed_shells.npz"
    counts = _cosmogrid(path, rng, compressed=compressed)
    shell_set = shells.cosmogrid_shells(path, zmax=1.5)
    # shell_info holds float32 redshifts
    np.testing.assert_allclose(shell_set.z_edges, [0.0, 0.3, 0.7, 1.2, 2.0], rtol=1e-6)
    deltas = dict(shell_set.deltas(NSIDE))
    assert sorted(deltas) == [0, 1, 2, 3]
    for s in range(4):
        c = counts[s].astype(float)
        np.testing.assert_allclose(deltas[s], c / c.mean() - 1.0, rtol=1e-12)
    assert shells.cosmogrid_shells(path, zmax=0.5).n_shell == 2


def test_cosmogrid_bad_files(tmp_path, rng):
    path = tmp_path / "no_z.npz"
    _cosmogrid(path, rng, fields=("lower_com", "upper_com", "shell_com"))
    with pytest.raises(shells.ShellError, match="missing redshift information") as err:
        shells.cosmogrid_shells(path)
    assert str(path) in str(err.value)
    gap = tmp_path / "gap.npz"
    _cosmogrid(gap, rng)
    with np.load(gap) as data:
        info = data["shell_info"].copy()
        counts = data["shells"]
    info["lower_z"][2] += 0.05
    np.savez(gap, shells=counts, shell_info=info)
    with pytest.raises(shells.ShellError, match="1 gaps or overlaps") as err:
        shells.cosmogrid_shells(gap)
    assert "gap.npz" in str(err.value)
    bad = tmp_path / "bad.npz"
    np.savez(bad, shells=np.ones((4, 100)), shell_info=info)
    with pytest.raises(shells.ShellError, match="100 pixels is not a HEALPix map"):
        shells.cosmogrid_shells(bad)


def test_tomography_from_gowerstreet_shells_is_the_born_sum(tmp_path, rng, repo_root):
    directory, maps = _gowerstreet(tmp_path, rng)
    config = yaml.safe_load((repo_root / "config" / "test.yaml").read_text())
    config["sims"].update(source="gowerstreet", nside=NSIDE, shell_files=[str(directory)])
    out = tmp_path / "kappa.fits"
    kappa = make_tomography(config, 0, out)
    back, header = read_healpix(out)
    np.testing.assert_array_equal(back, kappa)
    assert header["SIMSRC"] == "gowerstreet" and header["SHELLSRC"] == str(directory)
    assert header["NSHELLS"] == 5 and header["SHZMAX"] == pytest.approx(2.0)

    z = np.linspace(0.0, 3.0, 601)
    from kappadiff.survey import desy3_nz

    model = sims.lensing_cosmology(sims.Cosmology(), zmax=3.0)
    weights = sims.born_weights(model, np.array([0.0, 0.25, 0.55, 0.9, 1.4, 2.0]), z, desy3_nz(z))
    expected = np.zeros((4, 12 * NSIDE**2))
    for s, step in enumerate(sorted(Z_STEPS, reverse=True)):
        counts = maps[step].astype(float)
        expected += weights[:, s, None] * (counts / counts.mean() - 1.0)
    # float32 product of a float64 sum
    np.testing.assert_allclose(kappa, expected, rtol=1e-5, atol=1e-7)


def test_tomography_refuses_a_cosmology_other_than_the_simulations(tmp_path, rng, repo_root):
    directory, _ = _gowerstreet(tmp_path, rng)
    config = yaml.safe_load((repo_root / "config" / "test.yaml").read_text())
    config["sims"].update(source="gowerstreet", nside=NSIDE, shell_files=[str(directory)])
    config["sims"]["cosmology"]["omega_m"] = 0.28
    with pytest.raises(ValueError, match="omega_m = 0.3, but sims.cosmology.omega_m = 0.28") as err:
        make_tomography(config, 0, tmp_path / "kappa.fits")
    assert str(directory) in str(err.value)
