"""Stages of the likelihood-scaling search on the validation mocks, and figure 1.

The chain (``workflow/rules/scaling_search.smk``):

1. ``validate_sample`` — DPS on the mock patches of ``validation.patches`` (pixelised from the
   held-out sky, truth known) for every run: ``unscaled`` (A ≡ 1), each grid candidate
   ``t{t̄}_s{σ_t}`` and ``tuned`` (the chosen values). It calls the posterior stage's
   :func:`kappadiff.stages.posterior.sample_patch` with the run's
   :class:`~kappadiff.scaling.LikelihoodScaling`, so data and mocks share one sampler.
2. ``tarp_references`` — unconditional prior samples, the TARP reference points
   (:func:`kappadiff.stages.prior.draw_tarp_references`).
3. ``tarp_search`` — TARP coverage of every grid run and the unscaled run; the best
   ``(t̄, σ_t)`` (jointly or per bin) goes to ``results/validation/scaling.fits``, which the
   data ``sample_patch`` rule reads.
4. ``validate_calibration`` — TARP of the tuned and unscaled runs, and the trajectory
   diagnostic: figure 1.

TARP itself is :mod:`kappadiff.tarp`; the accuracy of a run (:func:`mean_error`,
:func:`mean_rho`, :func:`power_ratio`, :func:`power_error`) is :mod:`kappadiff.stats`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from .. import plots, tarp
from ..products import (
    atomic_output,
    catalogue_identity,
    check_same_catalogue,
    provenance,
    read_images,
    read_samples,
    read_stack,
    save_figure,
    table_hdu,
    write_fits,
)
from ..scaling import LikelihoodScaling, read_scaling, write_scaling
from ..seeding import derive_seed, rng_for
from ..stats import log_ell_bins, mean_error, mean_rho, power_error, power_ratio

__all__ = [
    "REFERENCE_KINDS",
    "calibration_figure",
    "run_coverage",
    "sample_mock",
    "sample_mock_params",
    "search_scaling",
]

log = logging.getLogger(__name__)

#: TARP reference distributions: draws of the diffusion prior (as Boruah et al.), and
#: uniform points in the bounding box of the truths (the ``tarp`` package's "random").
REFERENCE_KINDS = ("prior", "random")


#: The validation run of ``sampling.method: split_gibbs`` (untuned, no A(t)).
SPLIT_GIBBS_RUN = "split_gibbs"


def _run_method(run: str | None) -> str:
    """The sampler of a validation run: split Gibbs for :data:`SPLIT_GIBBS_RUN`, else DPS."""
    return "split_gibbs" if run == SPLIT_GIBBS_RUN else "dps"


def sample_mock_params(config: Mapping[str, Any], run: str | None = None) -> dict[str, Any]:
    """The configuration a validation run's samples depend on (its Snakemake params).

    The seed, ``sampling`` without its patch list (:func:`.posterior.sampling_params`), and
    ``validation.n_samples`` and ``validation.n_steps``, which :func:`sample_mock` puts in
    place of the data's. Everything :func:`sample_mock` reads, and nothing else: the scaling
    grid, the TARP and statistics settings and the patch lists stay out, so that adding a
    grid candidate runs only its own runs. (A new mock patch still reruns every run: the one
    ``pixelise`` job rewrites every data patch.) The sampling keys are those of the run's
    method (``run``: :data:`SPLIT_GIBBS_RUN` is split Gibbs, every other run DPS).
    """
    from .posterior import sampling_params  # torch-heavy: the Snakefile imports this module

    v = config["validation"]
    method = {**config["sampling"], "method": _run_method(run)}
    return {
        **sampling_params({**config, "sampling": method}),
        "validation": {"n_samples": v["n_samples"], "n_steps": v["n_steps"]},
    }


def _mock_config(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``config`` with the validation's sample count and NFE, samples kept, and ``method``."""
    cfg = copy.deepcopy(dict(config))
    v = config["validation"]
    cfg["sampling"] = {
        **cfg["sampling"],
        "n_samples": int(v["n_samples"]),
        "n_steps": int(v["n_steps"]),
        "save_samples": "float32",
        "method": method,
    }
    return cfg


def sample_mock(
    data_path: str | os.PathLike,
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    patch_id: int,
    run: str,
    scaling_path: str | os.PathLike | None = None,
    candidate_paths: Sequence[str | os.PathLike] = (),
    threads: int = 1,
    covariance_path: str | os.PathLike | None = None,
) -> Path:
    """Posterior samples of a mock patch for one validation run.

    Parameters
    ----------
    data_path, model_path, output_path, patch_id, threads
        As for :func:`kappadiff.stages.posterior.sample_patch`.
    config
        ``seed``, ``sampling`` and ``validation``; ``validation.n_samples`` and
        ``validation.n_steps`` replace the data's sampling settings, and samples are always
        saved (TARP needs them).
    run
        The run's name: ``unscaled`` or a grid candidate ``t{t̄}_s{σ_t}``
        (:meth:`kappadiff.scaling.LikelihoodScaling.from_run_name`), or ``tuned`` (DPS),
        or :data:`SPLIT_GIBBS_RUN` (split Gibbs, with ``covariance_path``).
    scaling_path
        The ``tuned`` run's scaling, ``results/validation/scaling.fits``; given, it is the
        run's scaling.
    candidate_paths
        The grid runs of the same patch. The noise seeds depend on the seed, patch and
        sample index only, so a run with the A(t) of one of them is that run bit for bit:
        its product is copied instead of being drawn again.
    covariance_path
        The prior's denoiser covariance, for the split-Gibbs run.

    Returns
    -------
    Path
        ``output_path``.
    """
    from .posterior import sample_patch  # torch-heavy: the Snakefile imports this module

    if run == SPLIT_GIBBS_RUN:
        log.info("mock patch %d, run %s", patch_id, run)
        cfg = _mock_config(config, "split_gibbs")
        return sample_patch(
            data_path,
            model_path,
            output_path,
            cfg,
            patch_id,
            threads,
            covariance_path=covariance_path,
        )
    if scaling_path is not None:
        scaling = read_scaling(scaling_path)
    else:
        scaling = LikelihoodScaling.from_run_name(run)
    for path in candidate_paths if scaling.scaled else ():
        have = LikelihoodScaling.from_header(fits.getheader(path, 0))
        if have.scaled and scaling.same_for(have, len(have.t_bar)):
            log.info(
                "mock patch %d, run %s: %s is the run %s, copied", patch_id, run, scaling, path
            )
            with atomic_output(output_path) as tmp:
                shutil.copyfile(path, tmp)
            return Path(output_path)
    cfg = _mock_config(config, "dps")
    log.info("mock patch %d, run %s: %s", patch_id, run, scaling)
    return sample_patch(
        data_path, model_path, output_path, cfg, patch_id, threads=threads, scaling=scaling
    )


def run_coverage(
    x: np.ndarray,
    theta: np.ndarray,
    pool: np.ndarray,
    config: Mapping[str, Any],
) -> dict[tuple[str, int], tarp.TarpResult]:
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
                refs = tarp.prior_references(pool[:, sel].reshape(len(pool), -1), n_sims, rng)
            else:
                refs = tarp.random_references(th, rng)
            out[kind, b] = tarp.tarp_coverage(
                xs, th, refs, rng, n_alpha=int(v["n_alpha"]), n_bootstrap=int(v["n_bootstrap"])
            )
    return out


def _coverage_columns(
    results: Mapping[str, Mapping[tuple[str, int], tarp.TarpResult]],
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
    results: Mapping[str, Mapping[tuple[str, int], tarp.TarpResult]],
    errors: Mapping[str, Mapping[str, np.ndarray]],
    scalings: Mapping[str, LikelihoodScaling],
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
        t_bar, sigma = sc.per_bin(n_bins) if sc.scaled else (np.full(n_bins, np.nan),) * 2
        for (kind, b), r in per.items():
            rows["run"].append(run)
            rows["scaled"].append(sc.scaled)
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


def _load_runs(
    run_paths: Mapping[str, Sequence[str | os.PathLike]],
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    references_path: str | os.PathLike,
    config: Mapping[str, Any],
) -> tuple[dict[str, dict[tuple[str, int], tarp.TarpResult]], dict[str, dict[str, np.ndarray]]]:
    """TARP of every run, and the accuracy of its posterior mean.

    The accuracy is ``{"mse": mean_error(...), "rho": mean_rho(...), "power":
    power_error(...)}`` per run (joint first), with ``"ell"`` and ``"power_ratio"``
    (:func:`power_ratio`) for figure 1.
    """
    check_same_catalogue(
        [*truth_paths, *data_paths, *(p for paths in run_paths.values() for p in paths)]
    )
    v = config["validation"]
    truth = read_stack(truth_paths, "KAPPA")
    if len(data_paths) != len(truth_paths):
        raise ValueError(f"{len(data_paths)} data patches (masks), but {len(truth_paths)} truths")
    mask = read_stack(data_paths, "MASK")
    if mask.shape != truth.shape:
        raise ValueError(f"masks have shape {mask.shape}, truths {truth.shape}")
    pixel_scale = float(config["layout"]["pixel_scale_arcmin"])
    ell_edges = log_ell_bins(truth.shape[-1], pixel_scale, int(v["n_ell_bins"]))
    ref_maps = read_images(references_path, ["KAPPA"])[0]["KAPPA"].astype(np.float64)
    results, errors = {}, {}
    for run, paths in run_paths.items():
        if len(paths) != len(truth_paths):
            raise ValueError(f"run {run}: {len(paths)} patches, but {len(truth_paths)} truths")
        samples = read_samples(paths)
        x, theta, pool = tarp.tarp_inputs(
            samples, truth, ref_maps, int(v["n_regions"]), int(v["block"])
        )
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
        unscaled run, patches in the order of ``truth_paths``. A run's name is its scaling
        (:meth:`kappadiff.scaling.LikelihoodScaling.from_run_name`); the unscaled run is
        evaluated for comparison but never chosen.
    truth_paths
        ``results/mocks/truth/patch_{id}.fits`` (HDU KAPPA) of the mock patches.
    data_paths
        ``results/mocks/data/patch_{id}.fits`` of the same patches (HDU MASK: the accuracy
        of a mean is of its observed pixels).
    references_path
        Prior reference maps (:func:`kappadiff.stages.prior.draw_tarp_references`).
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
    (:func:`kappadiff.tarp.choose_scaling`). Calibration alone cannot decide: a run
    whose likelihood is switched on too late returns prior samples, which TARP with prior
    references finds calibrated. The pixel error of the mean (:func:`mean_error`) is
    tabulated but does not rank: it barely separates a posterior that follows the data from
    one that follows the prior more (1–2 % where ρ_c differs by 2×), so the choice it makes
    flips with the patches searched. With ``validation.per_bin`` each bin chooses from its own
    TARP and accuracy; the candidates' runs use one pair for all bins, so a per-bin choice is
    checked afterwards by the ``tuned`` run.
    """
    v = config["validation"]
    scalings = {run: LikelihoodScaling.from_run_name(run) for run in run_paths}
    results, accuracy = _load_runs(run_paths, truth_paths, data_paths, references_path, config)
    grid = [r for r in run_paths if scalings[r].scaled]
    if not grid:
        raise ValueError("no scaled candidate run to choose from")
    n_bins = max(b for _, b in results[grid[0]])
    choice = _choose(results, accuracy, grid, scalings, n_bins, v)
    header = provenance(
        config,
        seed=derive_seed(config["seed"], "tarp"),
        perbin=bool(v["per_bin"]),
        tarprefs="prior",
        # the catalogue whose mocks tuned the scaling: the data sampler checks its own
        **catalogue_identity(data_paths[0]),
    )
    runs = [grid[i] for i in choice.candidate]
    write_scaling(scaling_output, choice.scaling, n_bins, choice.max_error, runs, header)
    _write_coverage(coverage_output, results, accuracy, scalings, config)
    return Path(scaling_output)


def _choose(
    results: Mapping[str, Mapping[tuple[str, int], tarp.TarpResult]],
    accuracy: Mapping[str, Mapping[str, np.ndarray]],
    grid: Sequence[str],
    scalings: Mapping[str, LikelihoodScaling],
    n_bins: int,
    v: Mapping[str, Any],
) -> tarp.ScalingChoice:
    """The search's choice among the grid runs (``v``: the ``validation`` section).

    Per bin: each bin's own TARP, ρ_c and power; joint: the joint TARP, the bins' mean ρ_c
    and the worst bin's power.
    """
    pairs = [scalings[r].pair for r in grid]
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
    choice = tarp.choose_scaling(
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
    return choice


def _write_coverage(
    path: str | os.PathLike,
    results: Mapping[str, Mapping[tuple[str, int], tarp.TarpResult]],
    errors: Mapping[str, Mapping[str, np.ndarray]],
    scalings: Mapping[str, LikelihoodScaling],
    config: Mapping[str, Any],
) -> Path:
    hdus = [
        table_hdu("CURVES", _coverage_columns(results)),
        table_hdu("SUMMARY", _summary_columns(results, errors, scalings)),
    ]
    return write_fits(path, hdus, primary_header=provenance(config))


def calibration_figure(
    run_paths: Mapping[str, Sequence[str | os.PathLike]],
    scaling_path: str | os.PathLike | None,
    truth_paths: Sequence[str | os.PathLike],
    data_paths: Sequence[str | os.PathLike],
    references_path: str | os.PathLike,
    coverage_output: str | os.PathLike,
    figure_output: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """TARP of the posterior runs and their trajectory diagnostic (figure 1).

    Parameters
    ----------
    run_paths
        Posterior products of each run on each mock patch (order of ``truth_paths``):
        ``tuned`` and ``unscaled`` DPS, or the :data:`SPLIT_GIBBS_RUN`.
    scaling_path
        ``results/validation/scaling.fits``, the ``tuned`` run's A(t), for the table (None
        without a tuned run).
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
    run_paths = {run: list(paths) for run, paths in run_paths.items()}
    scalings = {
        run: read_scaling(scaling_path) if run == "tuned" else LikelihoodScaling()
        for run in run_paths
    }
    if "tuned" in run_paths and scaling_path is None:
        raise ValueError("the tuned run's table needs its scaling file")
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
    save_figure(plots.calibration_panels(drift, results, power), figure_output)
    return Path(figure_output)
