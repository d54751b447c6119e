"""Statistics of the prior and of the reconstructions against the truth
(kappadiff.stages.statistics): tables and figures 0 and 2."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from validation_products import (
    IDENTITY,
    N_BINS,
    gaussian_maps,
    tiny_prior,
    validation_config,
    write_kappa,
    write_run,
)

from kappadiff import products
from kappadiff.stages import statistics


def test_prior_statistics_writes_the_table_and_figure(tmp_path, rng):
    model = tiny_prior(tmp_path / "model.pt")
    config = validation_config(n_prior_draws=3)
    cutouts = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path in cutouts:
        np.save(path, 0.02 * rng.normal(size=(2, N_BINS, 16, 16)).astype(np.float32))
    res = statistics.prior_statistics(
        model, cutouts, tmp_path / "prior.fits", tmp_path / "prior.png", config
    )
    assert res["prior"]["cl"].shape == res["simulations"]["cl"].shape
    with fits.open(tmp_path / "prior.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["SPECTRA", "PDF", "PEAKS"]
        assert hdul[0].header["NDRAW"] == 3 and hdul[0].header["NSIM"] == 3
        assert hdul[0].header["NSIMCL"] == 4  # every cut-out's C_l
        spectra = hdul["SPECTRA"].data
        assert spectra.columns.names == ["source", "bin", "ell", "cl", "cl_err"]
        assert hdul["PEAKS"].data.columns.names == ["source", "bin", "kappa", "count"]
        assert set(spectra["source"]) == {"prior", "simulations"}
        assert np.all(np.isfinite(spectra["cl"])) and np.all(spectra["cl"] > 0)
    assert (tmp_path / "prior.png").stat().st_size > 10_000
    config = validation_config(n_prior_draws=5)
    with pytest.raises(ValueError, match="5 cut-outs wanted, 4 in 2 files"):
        statistics.prior_statistics(model, cutouts, tmp_path / "p.fits", tmp_path / "p.png", config)


def test_validate_statistics_writes_tables_and_figures(tmp_path, rng):
    config = validation_config()
    n_patch = 2
    truth, samples = gaussian_maps(rng, n_patch, 4)
    files = {k: [] for k in ("tuned", "truth", "data", "ks", "wiener", "wiener_tomo")}
    for p in range(n_patch):
        files["tuned"].append(tmp_path / f"tuned_{p}.fits")
        write_run(files["tuned"][-1], samples[:, p], {"scaled": True, "t_bar": 500, "sigma_t": 20})
        for k, m in (("truth", truth[p]), ("ks", truth[p] + rng.normal(size=truth[p].shape)),
                     ("wiener", 0.5 * truth[p]), ("wiener_tomo", 0.8 * truth[p])):  # fmt: skip
            files[k].append(tmp_path / f"{k}_{p}.fits")
            write_kappa(files[k][-1], m)
        files["data"].append(tmp_path / f"data_{p}.fits")
        products.write_fits(
            files["data"][-1],
            [products.image_hdu("MASK", np.ones_like(truth[p]))],
            primary_header=products.provenance(None, **IDENTITY),
        )
    # training cut-outs of twice the truth's amplitude: 4x its power at every l
    cutouts = tmp_path / "cutouts.npy"
    np.save(cutouts, 2.0 * np.sqrt(5.0) * rng.normal(size=(40, N_BINS, 16, 16)).astype(np.float32))
    out = {k: tmp_path / f"{k}" for k in ("table.fits", "summary.csv", "maps.png", "stats.png")}
    res = statistics.validate_statistics(
        files["tuned"], files["truth"], files["data"], files["ks"], files["wiener"],
        files["wiener_tomo"], [cutouts],
        out["table.fits"], out["summary.csv"], out["maps.png"], out["stats.png"], config,
    )  # fmt: skip
    # a Wiener map that is half the truth correlates perfectly with it
    np.testing.assert_allclose(res["wiener"]["rho"], 1.0, atol=1e-12)
    lines = out["summary.csv"].read_text().splitlines()
    assert lines[0].startswith(
        "bin,ell_half_samples,ell_half_mean,ell_half_wiener,ell_half_wiener_tomo,ell_half_ks"
    )
    assert len(lines) == 1 + N_BINS
    summary = Table.read(out["summary.csv"], format="ascii.csv")
    # the perfect Wiener map leads the posterior mean (of 4 noisy samples) at high l in every
    # patch resampling, so even the 2.5th percentile of mean - Wiener is negative
    np.testing.assert_allclose(summary["rho_high_wiener"], 1.0, atol=1e-12)
    assert np.all(summary["rho_high_mean"] < 1.0)
    assert np.all(summary["rho_high_mean_minus_wiener_p2.5"] < 0.0)
    # so does the tomographic map (0.8 x truth); its l_0.5 is NaN (rho never falls to 0.5)
    np.testing.assert_allclose(summary["rho_high_wiener_tomo"], 1.0, atol=1e-12)
    assert np.all(np.isnan(summary["ell_half_ratio_mean_wiener_tomo"]))
    # truth (pixel variance 5) against the 4x ensemble: C_l ratio 1/4, outside the band of
    # 2-patch averages in every l bin but the lowest two, whose few modes (16 px patches)
    # scatter too widely; the max over l of |ratio - 1| is 0.75 plus that scatter
    n_ell = len(res["truth"]["ell"])
    assert np.all(summary["n_ell_truth_outside_band"] >= n_ell - 2)
    dev = summary["max_abs_cl_truth_ensemble_minus_1"]
    assert np.all((dev > 0.7) & (dev < 0.95))
    with fits.open(out["table.fits"]) as hdul:
        ens = hdul["ENSEMBLE"].data
        ratio = res["truth"]["cl"].ravel() / ens["cl"]  # rows ordered bin-major, as cl
        assert abs(np.median(ratio) - 0.25) < 0.05
        assert np.all(ens["cl_lo"] < ens["cl"]) and np.all(ens["cl"] < ens["cl_hi"])
        assert [h.name for h in hdul[1:]] == ["SPECTRA", "PDF", "PEAKS", "ELLHALF", "ENSEMBLE"]
        assert set(hdul["ELLHALF"].data["method"]) == set(statistics.METHODS)
        assert len(hdul["ENSEMBLE"].data) == N_BINS * n_ell
        assert hdul[0].header["NCUTOUT"] == 40
    assert out["maps.png"].stat().st_size > 10_000 and out["stats.png"].stat().st_size > 10_000
