"""Stages ``prior_statistics`` and ``validate_statistics``: figures 0 and 2 and their tables.

``prior_statistics`` compares unconditional draws of the prior with the simulations it
learnt (C_ℓ, PDF, peaks; figure 0). ``validate_statistics`` compares the tuned posterior on
the validation mocks, its mean, the Wiener filters and Kaiser-Squires with the truth: C_ℓ,
ρ_c(ℓ), ℓ₀.₅, PDF and peaks, the sample-variance band of the simulations' C_ℓ, the headline
table ``summary.csv`` and figure 2. The statistics themselves are :mod:`kappadiff.stats`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..products import (
    atomic_output,
    check_same_catalogue,
    provenance,
    read_samples,
    read_stack,
    save_figure,
    table_hdu,
    write_fits,
)
from ..seeding import derive_seed
from ..stats import (
    compare_prior,
    compare_statistics,
    ensemble_power_band,
    kappa_edges,
    log_ell_bins,
)
from .baselines import cutout_spectra, read_cutouts
from .prior import draw_prior_maps

__all__ = ["METHODS", "prior_statistics", "validate_statistics"]

log = logging.getLogger(__name__)

#: Map products compared with the truth in the statistics, in plotting order.
METHODS = ("samples", "mean", "wiener", "wiener_tomo", "ks", "truth")


def prior_statistics(
    model_path: str | os.PathLike,
    cutout_paths: Sequence[str | os.PathLike],
    table_output: str | os.PathLike,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
    threads: int = 1,
) -> dict[str, dict[str, np.ndarray]]:
    """The prior against the simulations it learnt: C_ℓ, PDF and peaks of unconditional draws.

    Draws ``validation.n_prior_draws`` maps with the validation runs' sampler
    (``validation.n_steps`` DDIM steps, the sampling η) and compares their PDF and peaks
    with as many training cut-outs, evenly spaced through ``cutout_paths``, and their C_ℓ
    with that of ``validation.n_ensemble_cutouts`` cut-outs per file
    (:func:`kappadiff.stats.compare_prior`).
    Where the data are weak the posterior returns the prior's statistics, so an error of
    the prior's C_ℓ shows in the posterior's.

    Writes ``table_output`` (HDUs SPECTRA: source, bin, ell, cl, cl_err; PDF: source, bin,
    kappa, density; PEAKS: source, bin, kappa, count) and ``figure_output`` (C_ℓ ratio
    prior / simulations with its standard error, PDF and peaks per bin).
    """
    v = config["validation"]
    n = int(v["n_prior_draws"])
    seed = derive_seed(config["seed"], "prior_statistics")
    draws, prior, nfe = draw_prior_maps(model_path, n, seed, config, threads)
    sims = read_cutouts(cutout_paths, n)
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    ell_edges = log_ell_bins(draws.shape[-1], pixel_scale, int(v["n_ell_bins"]))
    pdf_edges = kappa_edges(sims, int(v["n_pdf_bins"]), -4.0, 6.0)
    peak_edges = kappa_edges(sims, int(v["n_peak_bins"]), -1.0, 5.0)
    _, sims_cl = cutout_spectra(
        cutout_paths, draws.shape[-1], pixel_scale, ell_edges, int(v["n_ensemble_cutouts"])
    )
    res = compare_prior(draws, sims, pixel_scale, ell_edges, pdf_edges, peak_edges, sims_cl)
    ratio = res["prior"]["cl"] / res["simulations"]["cl"]
    ell = np.round(res["prior"]["ell"]).astype(int).tolist()
    for b in range(ratio.shape[0]):
        log.info(
            "bin %d: prior / simulations C_l %s at l = %s",
            b + 1,
            np.round(ratio[b], 3).tolist(),
            ell,
        )

    write_fits(
        table_output,
        [
            table_hdu("SPECTRA", _long_table(res, "cl", "ell", "cl", ("cl_err",))),
            table_hdu("PDF", _long_table(res, "pdf", "kappa", "density")),
            table_hdu("PEAKS", _long_table(res, "peaks", "kappa", "count")),
        ],
        primary_header=provenance(
            config,
            seed=seed,
            model_hash=prior.hash or None,
            NFE=nfe,
            NDRAW=n,
            NSIM=len(sims),
            NSIMCL=len(sims_cl),
        ),
    )
    save_figure(plots.prior_statistics_panels(res), figure_output)
    return res


def _long_table(
    res: Mapping[str, Mapping[str, np.ndarray]],
    key: str,
    x_name: str,
    y_name: str,
    extra: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Rows (source, bin, x, y, extra...) of ``res[source][key]``; x is ℓ or κ."""
    x_key = {"cl": "ell", "pdf": "pdf_kappa", "peaks": "peak_kappa"}[key]
    cols: dict[str, list] = {k: [] for k in ("source", "bin", x_name, y_name, *extra)}
    for source, r in res.items():
        for b in range(r[key].shape[0]):
            x = r[x_key] if r[x_key].ndim == 1 else r[x_key][b]
            cols["source"] += [source] * len(x)
            cols["bin"] += [b + 1] * len(x)
            cols[x_name] += list(x)
            cols[y_name] += list(r[key][b])
            for e in extra:
                cols[e] += list(r[e][b])
    return {name: np.asarray(values) for name, values in cols.items()}


def validate_statistics(
    tuned_paths: Sequence[str | os.PathLike],
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    ks_paths: Sequence[str | os.PathLike],
    wiener_paths: Sequence[str | os.PathLike],
    wiener_tomo_paths: Sequence[str | os.PathLike],
    cutout_paths: Sequence[str | os.PathLike],
    table_output: str | os.PathLike,
    summary_output: str | os.PathLike,
    maps_figure: str | os.PathLike,
    stats_figure: str | os.PathLike,
    config: Mapping[str, Any],
) -> dict[str, dict[str, np.ndarray]]:
    """Summary statistics of the tuned posterior, Wiener, KS and the truth on the mocks.

    Parameters
    ----------
    tuned_paths, truth_paths, data_paths, ks_paths, wiener_paths, wiener_tomo_paths
        Per mock patch (same order): the ``tuned`` run's posterior (SAMPLES, MEAN, STD), the
        truth (KAPPA), the pixelised data (MASK), the KS, per-bin and tomographic Wiener
        maps (KAPPA).
    cutout_paths
        The training cut-outs (``.npy``; ``validation.n_ensemble_cutouts`` evenly spaced per
        file are used): the ensemble C_ℓ and the sample-variance band of a
        ``len(truth_paths)``-patch average (:func:`kappadiff.stats.ensemble_power_band`).
    table_output
        ``results/validation/statistics.fits``: HDUs SPECTRA (method, bin, ell, cl, rho),
        PDF (method, bin, kappa, density), PEAKS (method, bin, kappa, count), ELLHALF
        (method, bin, ell_half) and ENSEMBLE (bin, ell, cl, cl_lo, cl_hi).
    summary_output
        ``results/validation/summary.csv``, one row per bin: ℓ₀.₅ of each method, the ratios
        ℓ₀.₅(DPS samples or mean)/ℓ₀.₅(Wiener) and ℓ₀.₅(DPS mean)/ℓ₀.₅(tomographic
        Wiener), max |C_ℓ(samples)/C_ℓ(truth) − 1| over ℓ, and the truth's and the samples'
        largest departure from the ensemble C_ℓ.
    maps_figure, stats_figure
        Figure 2: truth/mean/std/mask of the first mock patch, and the statistics.
    config
        ``layout.pixel_scale_arcmin`` and the ``validation`` section.

    Returns
    -------
    dict
        The output of :func:`kappadiff.stats.compare_statistics`.
    """
    maps, mask = _read_maps(
        {"tuned": tuned_paths, "truth": truth_paths, "data": data_paths, "ks": ks_paths,
         "wiener": wiener_paths, "wiener_tomo": wiener_tomo_paths}
    )  # fmt: skip
    v = config["validation"]
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    n_patch, n_bins, _, npix = maps["truth"].shape
    ell_edges = log_ell_bins(npix, pixel_scale, int(v["n_ell_bins"]))
    res = compare_statistics(
        maps,
        mask,
        pixel_scale,
        ell_edges,
        kappa_edges(maps["truth"], int(v["n_pdf_bins"]), -4.0, 6.0),
        kappa_edges(maps["truth"], int(v["n_peak_bins"]), -1.0, 5.0),
        n_bootstrap=int(v["n_bootstrap"]),
        seed=int(config["seed"]),
    )
    ensemble, n_cutouts = _ensemble_band(cutout_paths, n_patch, npix, ell_edges, config)
    header = provenance(config, NPATCH=n_patch, NSAMPLE=maps["samples"].shape[0], NCUTOUT=n_cutouts)
    write_fits(table_output, _statistics_hdus(res, ensemble, n_bins), primary_header=header)
    _write_summary(summary_output, res, ensemble)
    std0 = read_stack(tuned_paths[:1], "STD")[0]
    title = f"mock patch {Path(truth_paths[0]).stem}"
    figure = plots.truth_posterior_maps(maps["truth"][0], maps["mean"][0], std0, mask[0], title)
    save_figure(figure, maps_figure)
    save_figure(plots.summary_statistics(res, ensemble), stats_figure)
    return res


def _read_maps(
    paths: Mapping[str, Sequence[str | os.PathLike]],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every method's maps on the mock patches (``{method: [(sample,) patch, bin, n, n]}``)
    and the masks, from ``paths`` of the tuned run, truth, data, KS and Wiener products,
    checked to be of one catalogue and one shape."""
    check_same_catalogue([p for files in paths.values() for p in files])
    maps = {
        "samples": read_samples(paths["tuned"]),
        "mean": read_stack(paths["tuned"], "MEAN"),
        **{k: read_stack(paths[k], "KAPPA") for k in ("wiener", "wiener_tomo", "ks", "truth")},
    }
    mask = read_stack(paths["data"], "MASK")
    for name, m in maps.items():
        if m.shape[-4:] != maps["truth"].shape:
            raise ValueError(f"{name} maps have shape {m.shape}, truth {maps['truth'].shape}")
    return maps, mask


def _ensemble_band(
    cutout_paths: Sequence[str | os.PathLike],
    n_patch: int,
    npix: int,
    ell_edges: np.ndarray,
    config: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], int]:
    """The training cut-outs' C_ℓ and the band of ``n_patch``-patch averages, and how many
    cut-outs were used."""
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    n_cutouts = int(config["validation"]["n_ensemble_cutouts"])
    _, cl_cutouts = cutout_spectra(cutout_paths, npix, pixel_scale, ell_edges, n_cutouts)
    if cl_cutouts.shape[0] < n_patch:
        raise ValueError(
            f"{cl_cutouts.shape[0]} training cut-outs used, fewer than the {n_patch} mock "
            "patches: raise validation.n_ensemble_cutouts"
        )
    band = ensemble_power_band(cl_cutouts, n_patch, seed=int(config["seed"]))
    return band, cl_cutouts.shape[0]


def _statistics_hdus(
    res: Mapping[str, Mapping[str, np.ndarray]], ensemble: Mapping[str, np.ndarray], n_bins: int
) -> list[Any]:
    """Tables SPECTRA, PDF, PEAKS, ELLHALF (rows per method and bin) and ENSEMBLE."""
    spectra: dict[str, list] = {k: [] for k in ("method", "bin", "ell", "cl", "rho")}
    pdfs: dict[str, list] = {k: [] for k in ("method", "bin", "kappa", "density")}
    peaks: dict[str, list] = {k: [] for k in ("method", "bin", "kappa", "count")}
    half: dict[str, list] = {k: [] for k in ("method", "bin", "ell_half")}
    for method, r in res.items():
        for b in range(n_bins):
            n_ell = len(r["ell"])
            spectra["method"] += [method] * n_ell
            spectra["bin"] += [b + 1] * n_ell
            spectra["ell"] += list(r["ell"])
            spectra["cl"] += list(r["cl"][b])
            spectra["rho"] += list(r["rho"][b])
            for table, x, y, key in (
                (pdfs, "pdf_kappa", "pdf", "density"),
                (peaks, "peak_kappa", "peaks", "count"),
            ):
                table["method"] += [method] * len(r[x][b])
                table["bin"] += [b + 1] * len(r[x][b])
                table["kappa"] += list(r[x][b])
                table[key] += list(r[y][b])
            half["method"].append(method)
            half["bin"].append(b + 1)
            half["ell_half"].append(float(r["ell_half"][b]))
    ell = res["truth"]["ell"]
    band = {
        "bin": np.repeat(np.arange(1, n_bins + 1), ell.size),
        "ell": np.tile(ell, n_bins),
        **{k: ensemble[k].ravel() for k in ("cl", "cl_lo", "cl_hi")},
    }
    tables = {"SPECTRA": spectra, "PDF": pdfs, "PEAKS": peaks, "ELLHALF": half, "ENSEMBLE": band}
    return [
        table_hdu(name, {k: np.asarray(v) for k, v in cols.items()})
        for name, cols in tables.items()
    ]


def _percentiles(x: np.ndarray, q: Sequence[float]) -> list[float]:
    """Percentiles of the finite values of ``x``; NaN when there are none."""
    x = x[np.isfinite(x)]
    return [float(v) for v in np.percentile(x, q)] if x.size else [float("nan")] * len(q)


def _write_summary(
    path: str | os.PathLike,
    res: Mapping[str, Mapping[str, np.ndarray]],
    ensemble: Mapping[str, np.ndarray],
) -> None:
    """Per-bin headline numbers of the validation, as CSV.

    "High ℓ" is the upper half of the ℓ bins; ``rho_high_*`` is ρ_c averaged over them,
    and ``rho_high_mean_minus_wiener_p2.5`` the 2.5th percentile of the posterior mean's
    lead over Wiener across patch resamplings. ``ell_half_ratio_mean_wiener_tomo`` and
    ``rho_high_wiener_tomo`` measure the posterior mean against the tomographic Wiener
    filter, the Gaussian optimum with the same joint spectra.
    ``max_abs_cl_{truth,samples}_ensemble_minus_1`` compare with the training cut-outs'
    mean C_ℓ, and ``n_ell_truth_outside_band`` counts the ℓ bins where the truth's C_ℓ is
    outside the band of patch-set averages (:func:`ensemble_power_band`).
    """
    methods = [m for m in METHODS if m in res and m != "truth"]
    ratio_cl = res["samples"]["cl"] / res["truth"]["cl"]
    high = slice(len(res["truth"]["ell"]) // 2, None)
    lead = (res["mean"]["rho_boot"] - res["wiener"]["rho_boot"])[..., high].mean(axis=-1)
    ell_high = res["truth"]["ell"][high]
    log.info("high l: the upper %d l bins, from l = %.0f", ell_high.size, ell_high[0])
    lines = [
        ",".join(
            ["bin"]
            + [f"ell_half_{m}" for m in methods]
            + [
                "ell_half_ratio_samples_wiener",
                "ell_half_ratio_mean_wiener",
                "ell_half_ratio_mean_wiener_p16",
                "ell_half_ratio_mean_wiener_p84",
                "max_abs_cl_ratio_minus_1",
                "rho_high_mean",
                "rho_high_wiener",
                "rho_high_ks",
                "rho_high_mean_minus_wiener_p2.5",
                "max_abs_cl_truth_ensemble_minus_1",
                "max_abs_cl_samples_ensemble_minus_1",
                "n_ell_truth_outside_band",
                "ell_half_ratio_mean_wiener_tomo",
                "rho_high_wiener_tomo",
            ]
        )
    ]
    cl_truth = res["truth"]["cl"]
    outside = (cl_truth < ensemble["cl_lo"]) | (cl_truth > ensemble["cl_hi"])
    # ratio of each patch resampling (the same draws for both methods)
    boot_ratio = res["mean"]["ell_half_boot"] / res["wiener"]["ell_half_boot"]
    for b in range(ratio_cl.shape[0]):
        values = [float(res[m]["ell_half"][b]) for m in methods]
        w = float(res["wiener"]["ell_half"][b])
        values += [
            float(res["samples"]["ell_half"][b]) / w,
            float(res["mean"]["ell_half"][b]) / w,
            *_percentiles(boot_ratio[:, b], (16.0, 84.0)),
            float(np.max(np.abs(ratio_cl[b] - 1.0))),
            *(float(res[m]["rho"][b, high].mean()) for m in ("mean", "wiener", "ks")),
            *_percentiles(lead[:, b], (2.5,)),
            *(
                float(np.max(np.abs(res[m]["cl"][b] / ensemble["cl"][b] - 1.0)))
                for m in ("truth", "samples")
            ),
            int(outside[b].sum()),
            float(res["mean"]["ell_half"][b]) / float(res["wiener_tomo"]["ell_half"][b]),
            float(res["wiener_tomo"]["rho"][b, high].mean()),
        ]
        lines.append(",".join([str(b + 1)] + [f"{x:.6g}" for x in values]))
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    log.info("validation summary:\n%s", "\n".join(lines))
