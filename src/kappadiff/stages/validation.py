"""Stages of the validation on mocks: likelihood-scaling search, TARP, statistics, figures.

The chain (``workflow/rules/validation.smk``):

1. ``validate_sample`` — DPS on the mock patches of ``validation.patches`` (pixelised from the
   held-out sky, truth known) for every run: ``unscaled`` (A ≡ 1), each grid candidate
   ``t{t̄}_s{σ_t}`` and ``tuned`` (the chosen values). It calls the posterior stage's
   :func:`kappadiff.stages.posterior.sample_patch` with the scaling overridden, so data and
   mocks share one sampler.
2. ``tarp_references`` — unconditional prior samples, the TARP reference points.
3. ``tarp_search`` — TARP coverage of every grid run and the unscaled run; the best
   ``(t̄, σ_t)`` (jointly or per bin) goes to ``results/validation/scaling.fits``, which the
   data ``sample_patch`` rule reads.
4. ``validate_calibration`` — TARP of the tuned and unscaled runs, and the trajectory
   diagnostic: figure 1.
5. ``validate_statistics`` — C_ℓ, ρ_c(ℓ), ℓ₀.₅, PDF and peaks of the tuned posterior, its
   mean, Wiener, KS and the truth: tables and figure 2.
6. ``validate_patch_figure`` and ``validate_mosaic_figure`` — figures 3 and 4 of the data.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import calibration, plots, stats
from ..lensing import fourier_ell
from ..products import (
    ProductError,
    atomic_output,
    catalogue_identity,
    check_same_catalogue,
    image_hdu,
    open_fits,
    provenance,
    read_healpix,
    read_images,
    read_table,
    write_fits,
    write_table,
)
from ..seeding import derive_seed, rng_for
from .baselines import cutout_spectra, read_cutouts

__all__ = [
    "REFERENCE_KINDS",
    "calibration_figure",
    "compare_prior",
    "compare_statistics",
    "draw_tarp_references",
    "ensemble_power_band",
    "log_ell_bins",
    "mean_error",
    "mean_rho",
    "mosaic_figure",
    "mosaic_figure_memory_mb",
    "patch_figure",
    "power_error",
    "power_ratio",
    "prior_statistics",
    "read_scaling",
    "run_coverage",
    "sample_mock",
    "sample_mock_params",
    "search_scaling",
    "tarp_inputs",
    "validate_statistics",
]

log = logging.getLogger(__name__)

#: TARP reference distributions: draws of the diffusion prior (as Boruah et al.), and
#: uniform points in the bounding box of the truths (the ``tarp`` package's "random").
REFERENCE_KINDS = ("prior", "random")

#: Map products compared with the truth in the statistics, in plotting order.
METHODS = ("samples", "mean", "wiener", "wiener_tomo", "ks", "truth")


# --------------------------------------------------------------------------------------
# scaling file


def read_scaling(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``results/validation/scaling.fits``: ``{"scaled", "t_bar", "sigma_t"}``.

    ``t_bar`` and ``sigma_t`` are lists with one value per tomographic bin.
    """
    cols, header = read_table(path)
    for key in ("bin", "t_bar", "sigma_t"):
        if key not in cols:
            raise ProductError(f"{path}: scaling table lacks column '{key}'")
    values = np.concatenate([cols["t_bar"], cols["sigma_t"]])
    if not np.all(np.isfinite(values)) or np.any(cols["sigma_t"] <= 0):
        raise ProductError(f"{path}: t_bar/sigma_t must be finite with sigma_t > 0")
    return {
        "scaled": True,
        "t_bar": [float(v) for v in cols["t_bar"]],
        "sigma_t": [float(v) for v in cols["sigma_t"]],
    }


# --------------------------------------------------------------------------------------
# 1. DPS on the mocks


def _run_scaling_of(path: str | os.PathLike) -> dict[str, Any]:
    """The A(t) parameters a posterior product was drawn with (its SCALED/TBARb/SIGTb cards)."""
    from astropy.io import fits

    h = fits.getheader(path, 0)
    if not h.get("SCALED", False):
        return {"scaled": False}
    n = sum(1 for k in h if k.startswith("TBAR"))
    return {
        "scaled": True,
        "t_bar": [float(h[f"TBAR{b}"]) for b in range(1, n + 1)],
        "sigma_t": [float(h[f"SIGT{b}"]) for b in range(1, n + 1)],
    }


def sample_mock_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration a validation run's samples depend on (its Snakemake params).

    The seed, ``sampling`` without its patch list (:func:`.posterior.sampling_params`), and
    ``validation.n_samples`` and ``validation.n_steps``, which :func:`sample_mock` puts in
    place of the data's. Everything :func:`sample_mock` reads, and nothing else: the scaling
    grid, the TARP and statistics settings and the patch lists stay out, so that adding a
    grid candidate runs only its own runs. (A new mock patch still reruns every run: the one
    ``pixelise`` job rewrites every data patch.)
    """
    from .posterior import sampling_params

    v = config["validation"]
    return {
        **sampling_params(config),
        "validation": {"n_samples": v["n_samples"], "n_steps": v["n_steps"]},
    }


def sample_mock(
    data_path: str | os.PathLike,
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    patch_id: int,
    scaling: Mapping[str, Any] | None = None,
    scaling_path: str | os.PathLike | None = None,
    candidate_paths: Sequence[str | os.PathLike] = (),
    threads: int = 1,
) -> Path:
    """Posterior samples of a mock patch with a given likelihood scaling.

    Parameters
    ----------
    data_path, model_path, output_path, patch_id, threads
        As for :func:`kappadiff.stages.posterior.sample_patch`.
    config
        ``seed``, ``sampling`` and ``validation``; ``validation.n_samples`` and
        ``validation.n_steps`` replace the data's sampling settings, and samples are always
        saved (TARP needs them).
    scaling
        ``{"scaled": bool, "t_bar": float | list, "sigma_t": float | list}`` of a grid
        candidate or of the unscaled run.
    scaling_path
        Or the chosen scaling, read from ``results/validation/scaling.fits`` (the ``tuned``
        run).
    candidate_paths
        The grid runs of the same patch. The noise seeds depend on the seed, patch and
        sample index only, so a run with the A(t) of one of them is that run bit for bit:
        its product is copied instead of being drawn again.

    Returns
    -------
    Path
        ``output_path``.
    """
    import shutil

    from .posterior import sample_patch  # torch-heavy, and only this stage function needs it

    if (scaling is None) == (scaling_path is None):
        raise ValueError("give exactly one of scaling and scaling_path")
    if scaling_path is not None:
        scaling = read_scaling(scaling_path)
    cfg = copy.deepcopy(dict(config))
    s = dict(cfg["sampling"])
    v = config["validation"]
    s.update(
        scaled=bool(scaling["scaled"]),
        n_samples=int(v["n_samples"]),
        n_steps=int(v["n_steps"]),
        save_samples="float32",
    )
    if scaling["scaled"]:
        s.update(t_bar=scaling["t_bar"], sigma_t=scaling["sigma_t"])
    cfg["sampling"] = s
    if scaling["scaled"]:
        n_bins = len(np.atleast_1d(scaling["t_bar"]))
        want = (
            np.broadcast_to(np.asarray(scaling["t_bar"], float), (n_bins,)),
            np.broadcast_to(np.asarray(scaling["sigma_t"], float), (n_bins,)),
        )
        for path in candidate_paths:
            have = _run_scaling_of(path)
            if have["scaled"] and all(
                len(h) >= n_bins and np.array_equal(np.broadcast_to(w, len(h)), h)
                for w, h in zip(want, (have["t_bar"], have["sigma_t"]), strict=True)
            ):
                log.info("mock patch %d: scaling %s is the run %s, copied", patch_id, scaling, path)
                with atomic_output(output_path) as tmp:
                    shutil.copyfile(path, tmp)
                return Path(output_path)
    log.info("mock patch %d, scaling %s", patch_id, scaling)
    return sample_patch(data_path, model_path, output_path, cfg, patch_id, threads=threads)


# --------------------------------------------------------------------------------------
# 2. TARP references from the prior


def _draw_prior_maps(
    model_path: str | os.PathLike, n: int, seed: int, config: Mapping[str, Any], threads: int
) -> tuple[np.ndarray, Any, int]:
    """``n`` unconditional κ maps ``[n, bin, npix, npix]`` (DDIM: ``validation.n_steps``,
    ``sampling.step_power``, η).

    On the job's GPU when there is one, 16 maps at a time
    (:func:`kappadiff.stages.prior.draw_prior_samples`). Returns the maps, the prior (for
    its hash) and the number of network evaluations a map.
    """
    import torch

    from ..diffusion.checkpoint import load_prior
    from .prior import draw_prior_samples

    torch.set_num_threads(max(1, int(threads)))
    npix = int(config["layout"]["npix"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = load_prior(model_path, device)
    if prior.npix != npix:
        raise ValueError(
            f"{model_path}: prior trained on {prior.npix} px patches, layout.npix = {npix}"
        )
    n_steps = int(config["validation"]["n_steps"])
    power = float(config["sampling"]["step_power"])
    eta = float(config["sampling"]["eta"])
    kappa = draw_prior_samples(prior, n, n_steps, eta, seed, step_power=power)
    return kappa, prior, n_steps  # timestep_sequence always gives n_steps distinct steps


def draw_tarp_references(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    threads: int = 1,
) -> Path:
    """Unconditional prior samples (DDIM) for TARP reference points.

    Writes HDU KAPPA ``[sample, bin, row, col]`` (``validation.n_references`` maps of the
    patch size), drawn with ``validation.n_steps`` steps and the sampling η.
    """
    seed = derive_seed(config["seed"], "tarp_references")
    n = int(config["validation"]["n_references"])
    kappa, prior, nfe = _draw_prior_maps(model_path, n, seed, config, threads)
    header = provenance(config, seed=seed, model_hash=prior.hash or None, NFE=nfe)
    log.info("%d prior reference maps, %d steps", len(kappa), nfe)
    return write_fits(output_path, [image_hdu("KAPPA", kappa)], primary_header=header)


def compare_prior(
    draws: np.ndarray,
    sims: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
    pdf_edges: np.ndarray,
    peak_edges: np.ndarray,
    sims_cl: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """C_ℓ, one-point PDF and peak counts of prior draws and of simulated patches.

    Parameters
    ----------
    draws, sims
        ``[map, bin, n, n]``: unconditional draws of the prior and training cut-outs.
    pixel_scale_arcmin, ell_edges
        Pixel side and ℓ-bin edges ``[n_ell + 1]``.
    pdf_edges, peak_edges
        κ-bin edges per bin ``[bin, n + 1]``.
    sims_cl
        Optional binned C_ℓ ``[cut-out, bin, n_ell]`` of more simulated patches than
        ``sims`` (:func:`kappadiff.stages.baselines.cutout_spectra`) for the simulations'
        C_ℓ, so that its error is small against the draws'.

    Returns
    -------
    dict
        ``out["prior"]``, ``out["simulations"]``: ``ell``, ``cl [bin, n_ell]`` (mean over
        maps) and ``cl_err`` (its standard error), ``pdf``/``pdf_kappa`` and
        ``peaks``/``peak_kappa`` ``[bin, n]`` (peaks per map).
    """
    out = {}
    for name, maps in (("prior", draws), ("simulations", sims)):
        maps = np.asarray(maps, dtype=np.float64)
        if name == "simulations" and sims_cl is not None:
            cl = np.asarray(sims_cl, dtype=np.float64)
            ell = stats.power_spectrum_flat(maps[:1], pixel_scale_arcmin, ell_edges)[0]
        else:
            ell, cl = stats.power_spectrum_flat(maps, pixel_scale_arcmin, ell_edges)
        res = {
            "ell": ell,
            "cl": cl.mean(axis=0),
            "cl_err": cl.std(axis=0, ddof=1) / np.sqrt(cl.shape[0]),
        }
        res.update(_one_point(maps, None, pdf_edges, peak_edges, (0,)))
        out[name] = res
    return out


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
    (:func:`compare_prior`).
    Where the data are weak the posterior returns the prior's statistics, so an error of
    the prior's C_ℓ shows in the posterior's.

    Writes ``table_output`` (HDUs SPECTRA: source, bin, ell, cl, cl_err; PDF: source, bin,
    kappa, density; PEAKS: source, bin, kappa, count) and ``figure_output`` (C_ℓ ratio
    prior / simulations with its standard error, PDF and peaks per bin).
    """
    v = config["validation"]
    n = int(v["n_prior_draws"])
    seed = derive_seed(config["seed"], "prior_statistics")
    draws, prior, nfe = _draw_prior_maps(model_path, n, seed, config, threads)
    sims = read_cutouts(cutout_paths, n)
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    ell_edges = log_ell_bins(draws.shape[-1], pixel_scale, int(v["n_ell_bins"]))
    pdf_edges = _edges_from_truth(sims, int(v["n_pdf_bins"]), -4.0, 6.0)
    peak_edges = _edges_from_truth(sims, int(v["n_peak_bins"]), -1.0, 5.0)
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

    def long_table(key: str, x_name: str, y_name: str, extra: Sequence[str] = ()) -> dict:
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

    write_fits(
        table_output,
        [
            _table_hdu("SPECTRA", long_table("cl", "ell", "cl", ("cl_err",))),
            _table_hdu("PDF", long_table("pdf", "kappa", "density")),
            _table_hdu("PEAKS", long_table("peaks", "kappa", "count")),
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
    _save_figure(plots.prior_statistics(res), figure_output)
    return res


# --------------------------------------------------------------------------------------
# 3./4. TARP coverage of runs


def _table_hdu(name: str, columns: Mapping[str, np.ndarray]) -> Any:
    """A FITS binary table HDU of equal-length columns (strings, booleans, ints, floats)."""
    from astropy.io import fits

    cols = []
    for key, arr in columns.items():
        if arr.dtype.kind in "US":
            fmt = f"{max(1, max((len(x) for x in arr), default=1))}A"
        else:
            fmt = {"b": "L", "i": "K"}.get(arr.dtype.kind, "D")
        cols.append(fits.Column(name=key, format=fmt, array=arr))
    return fits.BinTableHDU.from_columns(cols, name=name)


def _save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _read_stack(paths: Sequence[str | os.PathLike], hdu: str) -> np.ndarray:
    return np.stack([read_images(p, [hdu])[0][hdu].astype(np.float64) for p in paths])


def _read_samples(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """SAMPLES of each patch stacked as ``[sample, patch, bin, row, col]``."""
    stack = _read_stack(paths, "SAMPLES")  # [patch, sample, bin, row, col]
    return np.moveaxis(stack, 0, 1)


def tarp_inputs(
    samples: np.ndarray,
    truth: np.ndarray,
    reference_maps: np.ndarray,
    n_regions: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TARP vectors of the samples, truths and prior references.

    Parameters
    ----------
    samples
        ``[sample, patch, bin, n, n]``.
    truth
        ``[patch, bin, n, n]``.
    reference_maps
        Prior samples ``[n_ref, bin, n, n]``.
    n_regions, block
        See :func:`kappadiff.calibration.tarp_vectors`.

    Returns
    -------
    (x, theta, pool)
        ``x [sample, sim, bin, dim]``, ``theta [sim, bin, dim]`` with sims = patch ×
        sub-region, and the reference pool ``[n_ref × n_regions², bin, dim]``.
    """
    if samples.shape[1:] != truth.shape:
        raise ValueError(f"samples {samples.shape} do not match truth {truth.shape}")
    if reference_maps.shape[1:] != truth.shape[1:]:
        raise ValueError(f"prior references {reference_maps.shape} do not match {truth.shape}")
    x = calibration.tarp_vectors(samples, n_regions, block)
    n_s, n_p, n_r = x.shape[:3]
    x = x.reshape(n_s, n_p * n_r, *x.shape[3:])
    theta = calibration.tarp_vectors(truth, n_regions, block)
    theta = theta.reshape(n_p * n_r, *theta.shape[2:])
    pool = calibration.tarp_vectors(reference_maps, n_regions, block)
    pool = pool.reshape(-1, *pool.shape[2:])
    return x, theta, pool


def run_coverage(
    x: np.ndarray,
    theta: np.ndarray,
    pool: np.ndarray,
    config: Mapping[str, Any],
) -> dict[tuple[str, int], calibration.TarpResult]:
    """TARP of one run: every reference kind, all bins jointly (bin 0) and each bin alone.

    References and random streams depend on the kind and bin only, not on the run, so that
    runs are compared on the same references.

    Returns
    -------
    dict
        ``{(reference kind, bin): TarpResult}``, bin 0 = joint, 1..n_bin = single bins.
    """
    v = config["validation"]
    n_sims, n_bins = theta.shape[0], theta.shape[1]
    out = {}
    for kind in REFERENCE_KINDS:
        for b in range(n_bins + 1):
            sel = slice(None) if b == 0 else slice(b - 1, b)
            xs = x[:, :, sel].reshape(x.shape[0], n_sims, -1)
            th = theta[:, sel].reshape(n_sims, -1)
            rng = rng_for(config["seed"], "tarp", kind, b)
            if kind == "prior":
                refs = calibration.prior_references(
                    pool[:, sel].reshape(len(pool), -1), n_sims, rng
                )
            else:
                refs = calibration.random_references(th, rng)
            out[kind, b] = calibration.tarp_coverage(
                xs, th, refs, rng, n_alpha=int(v["n_alpha"]), n_bootstrap=int(v["n_bootstrap"])
            )
    return out


def _coverage_columns(
    results: Mapping[str, Mapping[tuple[str, int], calibration.TarpResult]],
) -> dict[str, np.ndarray]:
    """Long table of the curves: run, refs, bin, alpha, ecp, ecp_lo, ecp_hi."""
    rows: dict[str, list] = {
        k: [] for k in ("run", "refs", "bin", "alpha", "ecp", "ecp_lo", "ecp_hi")
    }
    for run, per in results.items():
        for (kind, b), r in per.items():
            n = len(r.alpha)
            rows["run"] += [run] * n
            rows["refs"] += [kind] * n
            rows["bin"] += [b] * n
            for key in ("alpha", "ecp", "ecp_lo", "ecp_hi"):
                rows[key] += list(getattr(r, key))
    return {k: np.asarray(v) for k, v in rows.items()}


def _summary_columns(
    results: Mapping[str, Mapping[tuple[str, int], calibration.TarpResult]],
    errors: Mapping[str, Mapping[str, np.ndarray]],
    scalings: Mapping[str, Mapping[str, Any]],
) -> dict[str, np.ndarray]:
    """One row per (run, refs, bin): A(t) parameters, max |ECP − α| and the mean's accuracy."""
    rows: dict[str, list] = {
        k: []
        for k in (
            "run",
            "scaled",
            "t_bar",
            "sigma_t",
            "refs",
            "bin",
            "max_error",
            "max_error_plain",
            "mean_mse",
            "mean_rho",
            "max_power_error",
        )
    }
    for run, per in results.items():
        sc = scalings[run]
        n_bins = max(b for _, b in per)
        if sc["scaled"]:
            t_bar = np.broadcast_to(np.asarray(sc["t_bar"], float).ravel(), (n_bins,))
            sigma = np.broadcast_to(np.asarray(sc["sigma_t"], float).ravel(), (n_bins,))
        else:
            t_bar = sigma = np.full(n_bins, np.nan)
        for (kind, b), r in per.items():
            rows["run"].append(run)
            rows["scaled"].append(bool(sc["scaled"]))
            # joint rows (bin 0) carry bin 1's values (equal across bins unless chosen per bin)
            rows["t_bar"].append(float(t_bar[max(b, 1) - 1]))
            rows["sigma_t"].append(float(sigma[max(b, 1) - 1]))
            rows["refs"].append(kind)
            rows["bin"].append(b)
            rows["max_error"].append(r.max_error)
            rows["max_error_plain"].append(r.max_error_plain)
            rows["mean_mse"].append(float(errors[run]["mse"][b]))
            rows["mean_rho"].append(float(errors[run]["rho"][b]))
            rows["max_power_error"].append(float(errors[run]["power"][b]))
    return {k: np.asarray(v) for k, v in rows.items()}


def mean_error(mean: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Relative squared error of posterior means against the truths, per bin and joint.

    Parameters
    ----------
    mean, truth
        ``[patch, bin, n, n]``. Each map's own average (ℓ = 0, which shear does not
        constrain) is removed from both first.

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: ``Σ (mean − truth)² / Σ truth²`` per bin, the joint value (the average
        over bins) first. 1 for a mean of zero, 0 for a perfect map.
    """
    m = mean - mean.mean(axis=(-2, -1), keepdims=True)
    t = truth - truth.mean(axis=(-2, -1), keepdims=True)
    per_bin = ((m - t) ** 2).sum(axis=(0, 2, 3)) / (t**2).sum(axis=(0, 2, 3))
    return np.concatenate([[per_bin.mean()], per_bin])


def mean_rho(
    mean: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
) -> np.ndarray:
    """Cross-correlation of posterior means with the truths, averaged over ℓ bins.

    Parameters
    ----------
    mean, truth, mask
        ``[patch, bin, n, n]``; ``mask`` is 1 where observed. Spectra are of the maps times
        the mask, as in :func:`compare_statistics`.
    pixel_scale_arcmin, ell_edges
        Pixel side and ℓ-bin edges ``[n_ell + 1]`` (:func:`log_ell_bins`).

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: ρ_c(ℓ) (spectra averaged over patches first) averaged over the ℓ
        bins, per bin, with the joint value (the average over bins) first. 1 for a perfect
        map at any amplitude, 0 for a map uncorrelated with the truth.

    Notes
    -----
    This is the accuracy by which the scaling search ranks calibrated candidates. Unlike the
    pixel error (:func:`mean_error`), which the large scales dominate and which rewards a
    mean shrunk towards zero, it weighs every ℓ bin alike and ignores the amplitude, which
    the calibration test already constrains: two scalings whose means differ by 1–2 % in
    pixel error can differ by 2× in ρ_c at ℓ < 500 (docs/validation.md).
    """
    m = np.asarray(mean, dtype=np.float64) * mask
    t = np.asarray(truth, dtype=np.float64) * mask
    _, cross = stats.cross_spectrum_flat(m, t, pixel_scale_arcmin, ell_edges)
    _, cmm = stats.power_spectrum_flat(m, pixel_scale_arcmin, ell_edges)
    _, ctt = stats.power_spectrum_flat(t, pixel_scale_arcmin, ell_edges)
    rho = stats.rho_from_spectra(cross.mean(axis=0), cmm.mean(axis=0), ctt.mean(axis=0))
    per_bin = rho.mean(axis=-1)
    return np.concatenate([[per_bin.mean()], per_bin])


def power_ratio(
    samples: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """ℓ and C̄_ℓ^samples/C̄_ℓ^truth ``[bin, ℓ]``, arguments as for :func:`power_error`."""
    s = np.asarray(samples, dtype=np.float64) * mask
    t = np.asarray(truth, dtype=np.float64) * mask
    ell, css = stats.power_spectrum_flat(s, pixel_scale_arcmin, ell_edges)
    _, ctt = stats.power_spectrum_flat(t, pixel_scale_arcmin, ell_edges)
    return ell, css.mean(axis=(0, 1)) / ctt.mean(axis=0)


def power_error(ratio: np.ndarray) -> np.ndarray:
    """How far the samples' power strays from the truth's: the mean over ℓ of |C̄_ℓ^s/C̄_ℓ^t − 1|.

    Parameters
    ----------
    ratio
        ``[bin, ℓ]``: the samples' C_ℓ (``samples [sample, patch, bin, n, n]``, averaged over
        samples and patches) over the truths' (``[patch, bin, n, n]``, averaged over
        patches), of the maps times the mask (1 where observed): :func:`power_ratio`.

    Returns
    -------
    numpy.ndarray
        ``[1 + bin]``: per bin, the relative deviation of the samples' C_ℓ from the
        truths', its absolute value averaged over the ℓ bins; the largest over bins first.

    Notes
    -----
    Draws of a calibrated posterior are distributed like the truth over the data, so their
    mean power matches the truth's on the same patches. A likelihood step that is too
    strong fits the noise and adds power at every ℓ (unscaled DPS: 2–3× at 4′); TARP on
    block averages of a few sub-regions can miss that (docs/validation.md). The average
    over ℓ keeps a systematic excess and lets one ℓ bin of few modes, where the truths of a
    few patches stray from their ensemble, count for only its share.
    """
    per_bin = np.abs(np.asarray(ratio, dtype=np.float64) - 1.0).mean(axis=-1)
    return np.concatenate([[per_bin.max()], per_bin])


def _load_runs(
    run_paths: Mapping[str, Sequence[str | os.PathLike]],
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    references_path: str | os.PathLike,
    config: Mapping[str, Any],
) -> tuple[
    dict[str, dict[tuple[str, int], calibration.TarpResult]], dict[str, dict[str, np.ndarray]]
]:
    """TARP of every run, and the accuracy of its posterior mean.

    The accuracy is ``{"mse": mean_error(...), "rho": mean_rho(...), "power":
    power_error(...)}`` per run (joint first), with ``"ell"`` and ``"power_ratio"``
    (:func:`power_ratio`) for figure 1.
    """
    check_same_catalogue(
        [*truth_paths, *data_paths, *(p for paths in run_paths.values() for p in paths)]
    )
    v = config["validation"]
    truth = _read_stack(truth_paths, "KAPPA")
    if len(data_paths) != len(truth_paths):
        raise ValueError(f"{len(data_paths)} data patches (masks), but {len(truth_paths)} truths")
    mask = _read_stack(data_paths, "MASK")
    if mask.shape != truth.shape:
        raise ValueError(f"masks have shape {mask.shape}, truths {truth.shape}")
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    ell_edges = log_ell_bins(truth.shape[-1], pixel_scale, int(v["n_ell_bins"]))
    ref_maps = read_images(references_path, ["KAPPA"])[0]["KAPPA"].astype(np.float64)
    results, errors = {}, {}
    for run, paths in run_paths.items():
        if len(paths) != len(truth_paths):
            raise ValueError(f"run {run}: {len(paths)} patches, but {len(truth_paths)} truths")
        samples = _read_samples(paths)
        x, theta, pool = tarp_inputs(samples, truth, ref_maps, int(v["n_regions"]), int(v["block"]))
        results[run] = run_coverage(x, theta, pool, config)
        mean = samples.mean(axis=0)
        ell, ratio = power_ratio(samples, truth, mask, pixel_scale, ell_edges)
        errors[run] = {
            "mse": mean_error(mean, truth),
            "rho": mean_rho(mean, truth, mask, pixel_scale, ell_edges),
            "power": power_error(ratio),
            "ell": ell,
            "power_ratio": ratio,
        }
        log.info(
            "run %s: %d sims x %d dims, max|ECP-a| joint (prior refs) %.3f, per bin %s; "
            "mean's rho_c %s, relative squared error %s; samples' mean|C_l/C_l(truth) - 1| %s",
            run, theta.shape[0], theta.shape[1] * theta.shape[2],
            results[run]["prior", 0].max_error,
            [round(results[run]["prior", b].max_error, 3) for b in range(1, theta.shape[1] + 1)],
            np.round(errors[run]["rho"][1:], 3).tolist(),
            np.round(errors[run]["mse"][1:], 3).tolist(),
            np.round(errors[run]["power"][1:], 3).tolist(),
        )  # fmt: skip
    return results, errors


def search_scaling(
    run_paths: Mapping[str, Sequence[str | os.PathLike]],
    scalings: Mapping[str, Mapping[str, Any]],
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    references_path: str | os.PathLike,
    scaling_output: str | os.PathLike,
    coverage_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """TARP of every candidate run; write the best (t̄, σ_t) and the coverage table.

    Parameters
    ----------
    run_paths
        ``{run name: [posterior product of each mock patch]}`` for the grid candidates and the
        unscaled run, patches in the order of ``truth_paths``.
    scalings
        ``{run name: {"scaled", "t_bar", "sigma_t"}}``; runs with ``scaled`` False are
        evaluated for comparison but never chosen.
    truth_paths
        ``results/mocks/truth/patch_{id}.fits`` (HDU KAPPA) of the mock patches.
    data_paths
        ``results/mocks/data/patch_{id}.fits`` of the same patches (HDU MASK: the accuracy
        of a mean is of its observed pixels).
    references_path
        Prior reference maps (:func:`draw_tarp_references`).
    scaling_output
        ``results/validation/scaling.fits``: table with columns bin, t_bar, sigma_t,
        max_error, run (one row per tomographic bin); header SCALED = T, PERBIN, TARPREFS.
    coverage_output
        ``results/validation/tarp_search.fits``: HDU CURVES (run, refs, bin, alpha, ecp,
        ecp_lo, ecp_hi) and SUMMARY (run, scaled, t_bar, sigma_t, refs, bin, max_error,
        max_error_plain of the ``tarp`` package's plain estimator, the posterior mean's
        ``mean_rho`` (:func:`mean_rho`) and ``mean_mse`` (:func:`mean_error`), and the
        samples' ``max_power_error`` (:func:`power_error`)); bin 0 is the joint TARP of all
        bins, the average of the bins' accuracies and the largest power error.

    Notes
    -----
    Calibration is ``max_α |ECP(α) − α|`` with prior references (the paper's measure).
    Candidates within ``validation.tarp_tolerance`` of the diagonal, whose samples' C_ℓ
    are also within ``validation.power_tolerance`` of the truths' on average over ℓ in
    every bin (:func:`power_error`), count as calibrated, and
    among them the one whose posterior mean correlates best with the truth (the highest
    ρ_c averaged over ℓ bins, :func:`mean_rho`) wins; when none is calibrated, the best
    calibrated wins
    (:func:`kappadiff.calibration.choose_scaling`). Calibration alone cannot decide: a run
    whose likelihood is switched on too late returns prior samples, which TARP with prior
    references finds calibrated. The pixel error of the mean (:func:`mean_error`) is
    tabulated but does not rank: it barely separates a posterior that follows the data from
    one that follows the prior more (1–2 % where ρ_c differs by 2×), so the choice it makes
    flips with the patches searched. With ``validation.per_bin`` each bin chooses from its own
    TARP and accuracy; the candidates' runs use one pair for all bins, so a per-bin choice is
    checked afterwards by the ``tuned`` run.
    """
    v = config["validation"]
    results, accuracy = _load_runs(run_paths, truth_paths, data_paths, references_path, config)
    grid = [r for r in run_paths if scalings[r]["scaled"]]
    if not grid:
        raise ValueError("no scaled candidate run to choose from")
    n_bins = max(b for _, b in results[grid[0]])
    pairs = []
    for r in grid:
        tb = np.atleast_1d(np.asarray(scalings[r]["t_bar"], float))
        st = np.atleast_1d(np.asarray(scalings[r]["sigma_t"], float))
        if np.ptp(tb) or np.ptp(st):
            raise ValueError(f"candidate {r} has per-bin values; candidates share one pair")
        pairs.append((float(tb[0]), float(st[0])))
    # per bin: each bin's own values; joint: the joint TARP, the bins' mean ρ_c, the worst
    # bin's power
    if v["per_bin"]:
        cols = slice(1, None)
        errors = np.array(
            [[results[r]["prior", b].max_error for b in range(1, n_bins + 1)] for r in grid]
        )
    else:
        cols = 0
        errors = np.array([results[r]["prior", 0].max_error for r in grid])
    loss = np.array([1.0 - accuracy[r]["rho"][cols] for r in grid])
    power = np.array([accuracy[r]["power"][cols] for r in grid])
    admissible = power <= float(v["power_tolerance"])
    for r, ok, pw in zip(grid, admissible, power, strict=True):
        if not np.all(ok):
            log.info(
                "run %s: samples' power off the truth's by %s > validation.power_tolerance "
                "%.2f: not calibrated",
                r, np.round(pw, 3).tolist(), v["power_tolerance"],
            )  # fmt: skip
    choice = calibration.choose_scaling(
        pairs,
        errors,
        n_bins,
        per_bin=bool(v["per_bin"]),
        loss=loss,
        tolerance=float(v["tarp_tolerance"]),
        admissible=admissible,
    )
    log.info(
        "chosen t_bar %s, sigma_t %s (runs %s), max|ECP-a| %s",
        choice.t_bar.tolist(), choice.sigma_t.tolist(),
        [grid[i] for i in choice.candidate], np.round(choice.max_error, 3).tolist(),
    )  # fmt: skip

    header = provenance(
        config,
        seed=derive_seed(config["seed"], "tarp"),
        scaled=True,
        perbin=bool(v["per_bin"]),
        tarprefs="prior",
        # the catalogue whose mocks tuned the scaling: the data sampler checks its own
        **catalogue_identity(data_paths[0]),
    )
    write_table(
        scaling_output,
        {
            "bin": np.arange(1, n_bins + 1),
            "t_bar": choice.t_bar,
            "sigma_t": choice.sigma_t,
            "max_error": choice.max_error,
            "run": np.asarray([grid[i] for i in choice.candidate]),
        },
        header=header,
    )
    _write_coverage(coverage_output, results, accuracy, scalings, config)
    return Path(scaling_output)


def _write_coverage(
    path: str | os.PathLike,
    results: Mapping[str, Mapping[tuple[str, int], calibration.TarpResult]],
    errors: Mapping[str, Mapping[str, np.ndarray]],
    scalings: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
) -> Path:
    hdus = [
        _table_hdu("CURVES", _coverage_columns(results)),
        _table_hdu("SUMMARY", _summary_columns(results, errors, scalings)),
    ]
    return write_fits(path, hdus, primary_header=provenance(config))


def calibration_figure(
    tuned_paths: Sequence[str | os.PathLike],
    unscaled_paths: Sequence[str | os.PathLike],
    scaling_path: str | os.PathLike,
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    references_path: str | os.PathLike,
    coverage_output: str | os.PathLike,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """TARP of the tuned and unscaled runs and the trajectory diagnostic (figure 1).

    Parameters
    ----------
    tuned_paths, unscaled_paths
        Posterior products of the ``tuned`` and ``unscaled`` runs on each mock patch (order of
        ``truth_paths``).
    scaling_path
        ``results/validation/scaling.fits`` (the tuned run's A(t), for the table).
    truth_paths, data_paths, references_path
        As for :func:`search_scaling`.
    coverage_output
        ``results/validation/tarp_coverage.fits`` (HDUs CURVES and SUMMARY as in
        :func:`search_scaling`).
    figure_output
        PNG: trajectory diagnostic (DRIFT of the posterior products against t) of both runs,
        their joint TARP curves with bootstrap bands, prior and random references, and
        their samples' C_ℓ over the truths' (the search's power check).
    """
    run_paths = {"tuned": list(tuned_paths), "unscaled": list(unscaled_paths)}
    scalings = {"tuned": read_scaling(scaling_path), "unscaled": {"scaled": False}}
    results, accuracy = _load_runs(run_paths, truth_paths, data_paths, references_path, config)
    _write_coverage(coverage_output, results, accuracy, scalings, config)
    drift = {}
    for run, paths in run_paths.items():
        per_patch = [read_images(p, ["DRIFT", "TSTEPS"])[0] for p in paths]
        drift[run] = (
            per_patch[0]["TSTEPS"].astype(int),
            np.mean([d["DRIFT"] for d in per_patch], axis=0),
        )
    power = {run: (a["ell"], a["power_ratio"], a["power"][0]) for run, a in accuracy.items()}
    _save_figure(plots.calibration_panels(drift, results, power), figure_output)
    return Path(figure_output)


# --------------------------------------------------------------------------------------
# 5. statistics against the truth


def log_ell_bins(npix: int, pixel_scale_arcmin: float, n_bins: int) -> np.ndarray:
    """Logarithmic ℓ-bin edges from the fundamental mode to Nyquist, none of them empty.

    Starts from ``n_bins`` log-spaced bins between 0.75 ℓ_f and ℓ_Nyquist and merges bins that
    hold no Fourier mode of the ``npix × npix`` grid (the lowest ones on a small patch).
    """
    ell = fourier_ell(npix, npix, pixel_scale_arcmin).ravel()
    modes = ell[ell > 0]
    ell_nyq = 180.0 * 60.0 / pixel_scale_arcmin  # π / (pixel side in radians)
    edges = np.geomspace(0.75 * modes.min(), ell_nyq, n_bins + 1)

    def filled(lo: float, hi: float) -> bool:
        return bool(np.any((modes >= lo) & (modes < hi)))

    keep = [edges[0]]
    for e in edges[1:-1]:
        if filled(keep[-1], e):
            keep.append(e)
    keep.append(edges[-1])
    if len(keep) > 2 and not filled(keep[-2], keep[-1]):
        del keep[-2]
    return np.asarray(keep)


def _one_point(
    maps: np.ndarray,
    mask: np.ndarray | None,
    pdf_edges: np.ndarray,
    peak_edges: np.ndarray,
    lead: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """PDF and peak counts per bin of ``maps [..., bin, n, n]``, averaged over ``lead`` axes.

    Returns ``pdf``/``pdf_kappa`` and ``peaks``/``peak_kappa`` ``[bin, n]``; only pixels
    with ``mask`` > 0 count (all when None).
    """
    n_bins = maps.shape[-3]
    out = {
        "pdf": np.zeros((n_bins, pdf_edges.shape[-1] - 1)),
        "peaks": np.zeros((n_bins, peak_edges.shape[-1] - 1)),
        "pdf_kappa": 0.5 * (pdf_edges[:, 1:] + pdf_edges[:, :-1]),
        "peak_kappa": 0.5 * (peak_edges[:, 1:] + peak_edges[:, :-1]),
    }
    for b in range(n_bins):
        mb = None if mask is None else mask[..., b, :, :]
        out["pdf"][b] = stats.pdf(maps[..., b, :, :], pdf_edges[b], mb)[1].mean(axis=lead)
        counts = stats.peak_counts(maps[..., b, :, :], peak_edges[b], mask=mb)[1]
        out["peaks"][b] = counts.mean(axis=lead)
    return out


def compare_statistics(
    maps: Mapping[str, np.ndarray],
    mask: np.ndarray,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
    pdf_edges: np.ndarray,
    peak_edges: np.ndarray,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """C_ℓ, ρ_c(ℓ) with the truth, ℓ₀.₅, PDF and peak counts of each method, per bin.

    Parameters
    ----------
    maps
        ``{"truth": [patch, bin, n, n], "samples": [sample, patch, bin, n, n], other
        method: [patch, bin, n, n]}``.
    mask
        ``[patch, bin, n, n]``, 1 where observed. Every statistic is of the observed pixels
        only (outside them KS is zero-filled and the posterior is the prior's): spectra
        are of the maps times the mask, truth and method alike (pseudo-spectra, which
        equal the spectra on fully observed patches), PDF and peaks count observed pixels.
    pixel_scale_arcmin
        Pixel side.
    ell_edges
        ℓ-bin edges ``[n_ell + 1]``.
    pdf_edges, peak_edges
        κ-bin edges of the PDF and of the peak heights, per bin ``[bin, n + 1]``.
    n_bootstrap, seed
        Resamplings of the patches (with replacement; the same draws for every method)
        behind the scatter of ℓ₀.₅: few patches hold few low-ℓ modes.

    Returns
    -------
    dict
        ``out[method]`` with ``ell [n_ell]``, ``cl [bin, n_ell]`` (mean over patches and
        samples), ``rho [bin, n_ell]`` (spectra averaged over patches, and samples, before
        the ratio), ``ell_half [bin]`` (ℓ where ρ_c falls to 0.5; NaN if it never does),
        ``pdf [bin, n_pdf]`` and ``peaks [bin, n_peak]`` (peaks per patch) at the bin centres
        ``pdf_kappa`` and ``peak_kappa`` (same shapes), and ``rho_boot [n_bootstrap, bin,
        n_ell]`` and ``ell_half_boot [n_bootstrap, bin]``, ρ_c and ℓ₀.₅ of each patch
        resampling. For the samples,
        ``cl_lo``/``cl_hi`` are the 16/84th percentiles of the per-sample C_ℓ.

    Notes
    -----
    ρ_c(ℓ) = C_ℓ^{xt}/√(C_ℓ^{xx} C_ℓ^{tt}) (Boruah et al. 2025, eq. 9), with the three
    spectra averaged over patches (and samples) first.
    """
    truth = np.asarray(maps["truth"], dtype=np.float64)
    n_patch, n_bins = truth.shape[:2]
    draws = np.random.default_rng(seed).integers(0, n_patch, size=(n_bootstrap, n_patch))
    # spectra of the observed pixels (maps x mask, truth and method alike): in masked
    # pixels the posterior is the prior's and KS is zero-filled, neither measured
    truth_obs = truth * mask
    _, cl_truth = stats.power_spectrum_flat(truth_obs, pixel_scale_arcmin, ell_edges)
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, m in maps.items():
        m = np.asarray(m, dtype=np.float64)
        lead = (0, 1) if method == "samples" else (0,)
        msk = np.broadcast_to(mask, m.shape)
        m_obs = m * msk
        ell, cl = stats.power_spectrum_flat(m_obs, pixel_scale_arcmin, ell_edges)
        _, cross = stats.cross_spectrum_flat(
            m_obs, np.broadcast_to(truth_obs, m.shape), pixel_scale_arcmin, ell_edges
        )
        # per-patch spectra [patch, bin, ell] (samples averaged), then over patches
        per_patch = [c.mean(axis=0) if method == "samples" else c for c in (cross, cl)]
        per_patch.append(cl_truth)
        rho = stats.rho_from_spectra(*(c.mean(axis=0) for c in per_patch))
        # [n_bootstrap, bin, ell]
        boot = stats.rho_from_spectra(*(c[draws].mean(axis=1) for c in per_patch))
        res = {
            "ell": ell,
            "cl": cl.mean(axis=lead),
            "rho": rho,
            "ell_half": stats.crossing_ell(ell, rho, 0.5),
            "ell_half_boot": stats.crossing_ell(ell, boot, 0.5),
            "rho_boot": boot,
        }
        if method == "samples":
            per_sample = cl.mean(axis=1)  # [sample, bin, ell]
            res["cl_lo"], res["cl_hi"] = np.percentile(per_sample, [16.0, 84.0], axis=0)
        res.update(_one_point(m, msk, pdf_edges, peak_edges, lead))
        out[method] = res
    return out


def ensemble_power_band(
    cl: np.ndarray, n_patch: int, n_draws: int = 2000, seed: int = 0, level: float = 95.0
) -> dict[str, np.ndarray]:
    """The ensemble C_ℓ and the scatter of its average over ``n_patch`` patches.

    Parameters
    ----------
    cl
        ``[cut-out, bin, n_ell]``: binned C_ℓ of simulated patches (the training cut-outs).
    n_patch
        Patches in the validation average.
    n_draws, seed
        Random sets of ``n_patch`` distinct cut-outs.
    level
        Central percentage of the sets' averages that the band holds.

    Returns
    -------
    dict
        ``cl [bin, n_ell]``, the mean over all cut-outs, and ``cl_lo``, ``cl_hi`` [bin,
        n_ell], the band of ``n_patch``-patch averages. A validation set whose truth lies
        outside it differs from the ensemble by more than patch sample variance; a posterior
        that follows the prior where the data are weak then differs from that truth too.
        Cut-outs from all over the sky are independent; patches of one footprint share
        large-scale modes, so the band is narrower than the scatter of real patch sets.
    """
    cl = np.asarray(cl, dtype=np.float64)
    if not 1 <= n_patch <= cl.shape[0]:
        raise ValueError(f"ensemble_power_band: {n_patch} patches from {cl.shape[0]} cut-outs")
    rng = np.random.default_rng(seed)
    means = np.stack(
        [cl[rng.choice(cl.shape[0], n_patch, replace=False)].mean(axis=0) for _ in range(n_draws)]
    )
    tail = 0.5 * (100.0 - level)
    lo, hi = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return {"cl": cl.mean(axis=0), "cl_lo": lo, "cl_hi": hi}


def _edges_from_truth(truth: np.ndarray, n: int, lo_sigma: float, hi_sigma: float) -> np.ndarray:
    """Per-bin κ edges ``[bin, n + 1]`` from ``lo_sigma`` to ``hi_sigma`` truth std about 0."""
    sigma = truth.std(axis=(0, 2, 3))
    return np.stack([np.linspace(lo_sigma * s, hi_sigma * s, n + 1) for s in sigma])


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
        ``len(truth_paths)``-patch average (:func:`ensemble_power_band`).
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
        The output of :func:`compare_statistics`.
    """
    check_same_catalogue(
        [*tuned_paths, *truth_paths, *data_paths, *ks_paths, *wiener_paths, *wiener_tomo_paths]
    )
    v = config["validation"]
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    samples = _read_samples(tuned_paths)
    maps = {
        "samples": samples,
        "mean": _read_stack(tuned_paths, "MEAN"),
        "wiener": _read_stack(wiener_paths, "KAPPA"),
        "wiener_tomo": _read_stack(wiener_tomo_paths, "KAPPA"),
        "ks": _read_stack(ks_paths, "KAPPA"),
        "truth": _read_stack(truth_paths, "KAPPA"),
    }
    mask = _read_stack(data_paths, "MASK")
    for name, m in maps.items():
        if m.shape[-4:] != maps["truth"].shape:
            raise ValueError(f"{name} maps have shape {m.shape}, truth {maps['truth'].shape}")
    npix = maps["truth"].shape[-1]
    ell_edges = log_ell_bins(npix, pixel_scale, int(v["n_ell_bins"]))
    pdf_edges = _edges_from_truth(maps["truth"], int(v["n_pdf_bins"]), -4.0, 6.0)
    peak_edges = _edges_from_truth(maps["truth"], int(v["n_peak_bins"]), -1.0, 5.0)
    res = compare_statistics(
        maps,
        mask,
        pixel_scale,
        ell_edges,
        pdf_edges,
        peak_edges,
        n_bootstrap=int(v["n_bootstrap"]),
        seed=int(config["seed"]),
    )
    _, cl_cutouts = cutout_spectra(
        cutout_paths, npix, pixel_scale, ell_edges, int(v["n_ensemble_cutouts"])
    )
    n_patch = maps["truth"].shape[0]
    if cl_cutouts.shape[0] < n_patch:
        raise ValueError(
            f"{cl_cutouts.shape[0]} training cut-outs used, fewer than the {n_patch} mock "
            "patches: raise validation.n_ensemble_cutouts"
        )
    ensemble = ensemble_power_band(cl_cutouts, n_patch, seed=int(config["seed"]))

    n_bins = maps["truth"].shape[1]
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

    def hdu(name: str, cols: Mapping[str, Any]) -> Any:
        return _table_hdu(name, {k: np.asarray(v) for k, v in cols.items()})

    ell = res["truth"]["ell"]
    band = {
        "bin": np.repeat(np.arange(1, n_bins + 1), ell.size),
        "ell": np.tile(ell, n_bins),
        **{k: ensemble[k].ravel() for k in ("cl", "cl_lo", "cl_hi")},
    }
    write_fits(
        table_output,
        [
            hdu("SPECTRA", spectra),
            hdu("PDF", pdfs),
            hdu("PEAKS", peaks),
            hdu("ELLHALF", half),
            hdu("ENSEMBLE", band),
        ],
        primary_header=provenance(
            config, NPATCH=n_patch, NSAMPLE=samples.shape[0], NCUTOUT=cl_cutouts.shape[0]
        ),
    )
    _write_summary(summary_output, res, ensemble)
    first = {k: maps[k][0] for k in ("truth", "mean")}
    std0 = _read_stack(tuned_paths[:1], "STD")[0]
    _save_figure(
        plots.truth_posterior_maps(
            first["truth"], first["mean"], std0, mask[0], f"mock patch {Path(truth_paths[0]).stem}"
        ),
        maps_figure,
    )
    _save_figure(plots.summary_statistics(res, ensemble), stats_figure)
    return res


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


# --------------------------------------------------------------------------------------
# 6. figures of the data: one patch, the mosaic


def read_cluster_catalogue(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """RA, DEC (deg) and LAMBDA (richness) of a cluster catalogue FITS table (redMaPPer).

    Reads the first table extension; raises naming the file and missing column.
    """
    from astropy.io import fits

    with open_fits(path) as hdul:
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
        if not tables:
            raise ProductError(f"{path}: no table extension")
        data = tables[0].data
        names = [c.upper() for c in tables[0].columns.names]
        missing = [c for c in ("RA", "DEC", "LAMBDA") if c not in names]
        if missing:
            raise ProductError(f"{path}: cluster catalogue lacks columns {missing} (has {names})")
        out = {c: np.asarray(data[c], dtype=np.float64) for c in ("RA", "DEC", "LAMBDA")}
    bad = ~(np.isfinite(out["RA"]) & np.isfinite(out["DEC"]) & np.isfinite(out["LAMBDA"]))
    if bad.any():
        log.warning(
            "%s: %d of %d clusters with non-finite RA/DEC/LAMBDA dropped", path, bad.sum(), bad.size
        )
        out = {k: x[~bad] for k, x in out.items()}
    return out


def truth_peaks(truth: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``n`` highest peaks of the true κ in each bin: ``[(row, col, κ)]`` per bin."""
    out = []
    peaks = stats.find_peaks(truth)
    for b in range(truth.shape[0]):
        rows, cols = np.nonzero(peaks[b])
        heights = truth[b, rows, cols]
        order = np.argsort(heights)[::-1][:n]
        out.append((rows[order].astype(float), cols[order].astype(float), heights[order]))
    return out


def patch_figure(
    posterior_path: str | os.PathLike,
    ks_path: str | os.PathLike,
    wiener_path: str | os.PathLike,
    clusters_path: str | os.PathLike | None,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """Figure 3: DPS mean, Wiener, KS and DPS std of one patch with cluster positions.

    ``clusters_path`` is either a cluster catalogue (``validation.clusters``: FITS with RA,
    DEC, LAMBDA; the ``validation.n_clusters`` richest in the patch are drawn, the same in
    every bin), or, on a mock catalogue, the patch's truth (HDU KAPPA; its ``n_clusters``
    highest peaks per bin are drawn), or None (real data without a cluster catalogue: no
    markers).
    """
    from ..sphere import sky_to_pixel

    n_show = int(config["validation"]["n_clusters"])
    post, header = read_images(posterior_path, ["MEAN", "STD"])
    mean, std = post["MEAN"], post["STD"]
    maps = {
        "DPS mean": mean,
        "Wiener": read_images(wiener_path, ["KAPPA"])[0]["KAPPA"],
        "Kaiser-Squires": read_images(ks_path, ["KAPPA"])[0]["KAPPA"],
        "DPS std": std,
    }
    n_bins, npix = mean.shape[0], mean.shape[-1]
    if clusters_path is None:
        none = np.empty(0)
        clusters = [(none, none, none)] * n_bins
        label = "no cluster catalogue (validation.clusters)"
    elif config["validation"]["clusters"]:
        cat = read_cluster_catalogue(clusters_path)
        row, col = sky_to_pixel(
            cat["RA"], cat["DEC"], header["CRVAL1"], header["CRVAL2"], npix,
            float(config["layout"]["pixel_scale_arcmin"]),
        )  # fmt: skip
        inside = (
            np.isfinite(row)
            & (row >= -0.5)
            & (row < npix - 0.5)
            & (col >= -0.5)
            & (col < npix - 0.5)
        )
        order = np.argsort(cat["LAMBDA"][inside])[::-1][:n_show]
        sel = (row[inside][order], col[inside][order], cat["LAMBDA"][inside][order])
        clusters = [sel] * n_bins
        label = f"redMaPPer-like clusters (λ, {len(order)} richest)"
    else:
        truth = read_images(clusters_path, ["KAPPA"])[0]["KAPPA"].astype(np.float64)
        clusters = truth_peaks(truth, n_show)
        label = f"{n_show} highest true-κ peaks"
    title = f"patch {header.get('PATCH', Path(posterior_path).stem)}"
    _save_figure(plots.patch_reconstructions(maps, clusters, title, label), figure_output)
    return Path(figure_output)


def mosaic_figure_memory_mb(nside: int) -> int:
    """Memory (MB) of the ``validate_mosaic_figure`` job at the mosaic's ``nside``.

    The mean, std and coverage maps (9 float32 a pixel), the two float64 maps drawn and
    skyproj's rendering: 12.4 GB measured at nside 4096 (config/desy3_smoke.yaml), 61 bytes
    a pixel; counted as 64 bytes a pixel, plus 30 % and 1.5 GB.
    """
    return int(1.3 * 12 * nside**2 * 64 / 1e6) + 1500


def mosaic_figure(
    mean_path: str | os.PathLike,
    std_path: str | os.PathLike,
    coverage_path: str | os.PathLike,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """Figure 4: HEALPix mosaic of the posterior mean and std, bin ``validation.mosaic_bin``.

    Pixels with zero coverage (``results/mosaic/coverage.fits``) are left blank.
    """
    import healpy as hp

    b = int(config["validation"]["mosaic_bin"])
    mean, _ = read_healpix(mean_path)
    std, _ = read_healpix(std_path)
    coverage, _ = read_healpix(coverage_path)
    if not 1 <= b <= len(mean):
        raise ValueError(f"validation.mosaic_bin = {b}, but {mean_path} holds {len(mean)} bins")
    if coverage.shape[-1] != mean.shape[-1]:
        raise ProductError(
            f"{coverage_path}: {coverage.shape[-1]} pixels, {mean_path} has {mean.shape[-1]}"
        )
    covered = coverage[0] > 0
    log.info("mosaic: %d covered pixels of %d", int(covered.sum()), covered.size)
    maps = [np.where(covered, m[b - 1].astype(np.float64), hp.UNSEEN) for m in (mean, std)]
    _save_figure(plots.mosaic_maps(*maps, f"bin {b}"), figure_output)
    return Path(figure_output)
