"""Stage ``sample_patch``: posterior samples of one data patch, by DPS or split Gibbs.

Reads ``results/data/patch_{id}.fits`` (whose ``PATCHID`` card must be the patch id) and
the prior checkpoint, draws ``sampling.n_samples`` posterior samples in batches of
``sampling.batch_size`` with ``sampling.method``:

* ``dps``: the prior's reverse diffusion guided by the shear likelihood
  (:mod:`kappadiff.diffusion.dps`), scaled by the caller's A(t), the TARP search's
  (``results/validation/scaling.fits``) or the configuration's
  (:class:`kappadiff.scaling.LikelihoodScaling`);
* ``split_gibbs``: annealed split Gibbs (:mod:`kappadiff.diffusion.split_gibbs`), an exact
  shear step and the network's prior step with the prior's denoiser covariance
  (``results/prior/denoiser_covariance.fits``); nothing tuned;

and writes
``results/posterior/patch_{id}.fits``: MEAN, STD, optionally SAMPLES
``[sample, bin, row, col]``, CHI2 ``[sample, bin]``, the trajectory diagnostic DRIFT
``[step, bin]`` with its timesteps TSTEPS (DPS: the DDIM steps; split Gibbs: the sweeps'
levels, the drift of ``√ᾱ_t z``), all with the data patch's TAN WCS; its header records
``PATCHID``, ``METHOD`` and the sampler's settings (DPS: the scaling ``SCALED``,
``TBARb``, ``SIGTb``; split Gibbs: ``SWEEPS``, ``RHOSTART``, ``RHOFLOOR`` (the patch's floor, in
network units), ``CGITER``).

Each batch draws its noise from a generator seeded by (config seed, patch id, first sample
index, batch size), so a rerun reproduces the samples bit for bit on CPU. Finished batches
are kept in ``<product>.partial.npz`` beside the product, so a pre-empted job resumes
where it stopped; that file is removed once the product is written. It is resumed only
with the same data, model, seed and every sampling setting that changes a draw; with a
lower ``sampling.n_samples`` only its batches that a fresh run would draw alike are kept,
so the product holds exactly ``NSAMPLE`` samples, the ones a fresh run draws.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from ..catalogue.io import read_data_patch
from ..config import method_keys, without_speed_keys
from ..diffusion.checkpoint import Prior, load_prior
from ..diffusion.dps import ShearData, TrajectoryDiagnostic, chi2, dps_guidance, shear_data
from ..diffusion.sampler import Guidance, ddim_sample, timestep_sequence
from ..diffusion.speed import Speedups, prepare_network
from ..diffusion.split_gibbs import (
    DenoiserCovariance,
    ExactDataStep,
    SplitGibbsPlan,
    patch_sampler,
    split_gibbs_sample,
)
from ..products import (
    ProductError,
    atomic_output,
    check_same_catalogue,
    file_hash,
    image_hdu,
    load_npy,
    provenance,
    read_images,
    write_fits,
)
from ..scaling import LikelihoodScaling, read_scaling
from ..seeding import derive_seed

__all__ = ["posterior_seed", "sample_patch", "sampling_params"]

log = logging.getLogger(__name__)


def posterior_seed(
    seed: int, patch_id: int, first: int | None = None, size: int | None = None
) -> int:
    """Seed of patch ``patch_id``'s posterior, or of its batch of ``size`` from sample ``first``."""
    keys: list[int | str] = ["posterior", int(patch_id)]
    if first is not None:
        keys += [int(first), int(size)]
    return derive_seed(seed, *keys)


def sampling_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration a patch's samples depend on: the seed and ``sampling``.

    The patch list is left out, so that adding a patch does not rerun the others, and so are
    the GPU speed switches (:data:`kappadiff.config.SPEED_KEYS`), which change no sample.
    """
    section = method_keys(without_speed_keys(config["sampling"]))
    sampling = {k: v for k, v in section.items() if k != "patches"}
    return {"seed": config["seed"], "sampling": sampling}


def _method(sampling: Mapping[str, Any]) -> str:
    """``sampling.method`` (DPS where a section predates the choice)."""
    return str(sampling.get("method", "dps"))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("sampling.device = 'cuda', but torch sees no CUDA device")
    return torch.device(name)


#: Sampling settings that do not change a draw: left out of the resume key. ``n_samples``
#: is handled by keeping the batches a run of the new count draws alike (:func:`_load_partial`).
NOT_IN_RESUME_KEY = (
    "patches",
    "n_samples",
    "save_samples",
    "checkpoint_batches",
    "runtime_min",
    "mem_mb",
)


def _resume_key(
    data_hash: str, model_hash: str, seed: int, patch_id: int, sampling: Mapping[str, Any]
) -> str:
    """What a partial run's draws depend on, as JSON: data, model, seed, patch and settings.

    ``sampling`` is the section in effect: the run's A(t) in ``scaled``, ``t_bar`` and
    ``sigma_t`` (:func:`_sampling_in_effect`), whether it came from the configuration, the
    scaling file or the caller.
    """
    # the GPU speed switches change no draw either (kappadiff.config.SPEED_KEYS)
    draws = {
        k: v
        for k, v in method_keys(without_speed_keys(sampling)).items()
        if k not in NOT_IN_RESUME_KEY
    }
    key = {"data": data_hash, "model": model_hash, "seed": seed, "patch": patch_id}
    return json.dumps({**key, "sampling": draws}, sort_keys=True, default=str)


def _key_changes(stored: str, current: str) -> str:
    """What differs between two resume keys, e.g. ``"sampling.t_bar, model"``."""
    try:
        old = json.loads(stored)
    except ValueError:
        return "settings (a partial file of an older version)"
    new = json.loads(current)
    was, now = old.get("sampling", {}), new["sampling"]
    changed = [f"sampling.{k}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    changed += [k for k in ("data", "model", "seed", "patch") if old.get(k) != new.get(k)]
    return ", ".join(changed) or "settings"


def _batch_plan(n_samples: int, batch_size: int) -> list[tuple[int, int]]:
    """``(first sample, size)`` of each batch a run draws; each pair seeds its batch's noise."""
    return [(f, min(batch_size, n_samples - f)) for f in range(0, n_samples, batch_size)]


def _no_samples() -> dict[str, list[np.ndarray]]:
    """Per-sample κ [bin, row, col], χ² [bin] and drift [step, bin], none drawn yet."""
    return {"kappa": [], "chi2": [], "drift": []}


def _load_partial(
    path: Path, key: str, plan: list[tuple[int, int]]
) -> tuple[dict[str, list[np.ndarray]], int]:
    """The samples of a pre-empted run with the same ``key`` that a run of ``plan`` keeps.

    Those are the samples of the partial run's leading batches that are batches of ``plan``
    too (same first sample and size, hence the same seed): after ``n_samples`` is lowered,
    exactly the samples a fresh run draws, and none beyond them. With another key, none.
    Returns the samples and the number of batches of ``plan`` they make.
    """
    if not path.exists():
        return _no_samples(), 0
    with load_npy(path) as z:
        if str(z["key"]) != key:
            log.warning(
                "%s was drawn with another %s: starting afresh",
                path,
                _key_changes(str(z["key"]), key),
            )
            return _no_samples(), 0
        batches = [(int(f), int(n)) for f, n in z["batches"]]
        alike = 0
        while alike < min(len(batches), len(plan)) and batches[alike] == plan[alike]:
            alike += 1
        keep = sum(n for _, n in batches[:alike])
        done = {k: list(z[k][:keep]) for k in ("kappa", "chi2", "drift")}
    if alike < len(batches):
        log.info(
            "%s holds %d samples; keeping the first %d, those a run of %d samples draws alike",
            path,
            sum(n for _, n in batches),
            keep,
            sum(n for _, n in plan),
        )
    log.info("resuming from %s: %d samples already drawn", path, keep)
    return done, alike


def _save_partial(
    path: Path,
    key: str,
    done: Mapping[str, list[np.ndarray]],
    batches: list[tuple[int, int]],
) -> None:
    """Keep the finished batches (their samples and ``(first, size)``) for a resume."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                key=np.asarray(key),
                batches=np.asarray(batches, dtype=np.int64).reshape(-1, 2),
                **{k: np.stack(v) for k, v in done.items()},
            )


def _samples_hdu(samples: np.ndarray, wcs: fits.Header, storage: str) -> fits.ImageHDU:
    """HDU SAMPLES as float32, or in 16 bits (``"float16"``).

    FITS has no half-precision floats, so 16-bit storage is the standard scaled integer:
    int16 with BSCALE/BZERO spanning the samples' range, read back as float32 by any FITS
    reader; the rounding error is at most BSCALE/2 (about 1e-5 of the range of κ).
    """
    hdu = image_hdu("SAMPLES", samples, wcs)
    if storage == "float16":
        hdu.scale("int16", option="minmax")
    return hdu


@dataclass(frozen=True)
class _SplitGibbs:
    """What split-Gibbs draws of a patch share besides the network: plan, Γ, data step."""

    plan: SplitGibbsPlan
    covariance: DenoiserCovariance
    data_step: ExactDataStep


@dataclass(frozen=True)
class _Problem:
    """What every batch of a patch's draws shares: data, prior, network, steps and the
    method's parts (DPS: the guidance; split Gibbs: :class:`_SplitGibbs`)."""

    data: ShearData
    wcs: fits.Header
    prior: Prior
    network: torch.nn.Module
    steps: list[int]
    guidance: Guidance | None
    device: torch.device
    split_gibbs: _SplitGibbs | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_bins, npix)`` of the patch."""
        return self.data.g1.shape[0], self.data.g1.shape[-1]

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return self.split_gibbs.plan.nfe if self.split_gibbs else len(self.steps)


def _resolve_scaling(
    sampling: Mapping[str, Any],
    scaling: LikelihoodScaling | None,
    scaling_path: str | os.PathLike | None,
) -> LikelihoodScaling:
    """The run's A(t): ``scaling``, else the one in ``scaling_path``, else the config's
    (none for split Gibbs)."""
    if _method(sampling) != "dps":
        return LikelihoodScaling()
    if scaling is not None:
        return scaling
    if scaling_path is None:
        return LikelihoodScaling.from_sampling(sampling)
    tuned = read_scaling(scaling_path)
    log.info("likelihood scaling from %s: %s", scaling_path, tuned)
    return tuned


def _check_patch_id(data_path: str | os.PathLike, patch_id: int) -> None:
    """Check that the data file holds patch ``patch_id`` (its ``PATCHID`` card).

    The id seeds the draws, so samples drawn for one patch from another's data would pass
    for that patch's posterior.
    """
    header = fits.getheader(data_path, 0)
    if "PATCHID" not in header:
        raise ProductError(
            f"{data_path}: no PATCHID card, so the patch it holds is unknown (a data patch of "
            "an older version); rebuild the data with --forcerun pixelise pixelise_mocks"
        )
    if int(header["PATCHID"]) != int(patch_id):
        raise ProductError(
            f"{data_path} holds patch {int(header['PATCHID'])} (PATCHID), but patch "
            f"{int(patch_id)} was asked for: the file and the patch id disagree"
        )


def read_denoiser_covariance(path: str | os.PathLike, npix: int) -> DenoiserCovariance:
    """The prior's denoiser covariance (``results/prior/denoiser_covariance.fits``)."""
    images, header = read_images(path, ["RHO", "GAMMA"])
    if int(header["NPIX"]) != npix:
        raise ProductError(
            f"{path}: covariance of {header['NPIX']}^2 maps, but the prior's are {npix}^2"
        )
    return DenoiserCovariance(images["RHO"], images["GAMMA"], npix)


def _split_gibbs_parts(
    data: ShearData, prior: Prior, sampling: Mapping[str, Any], covariance_path: str | os.PathLike
) -> _SplitGibbs:
    """The split-Gibbs plan, the prior's Γ and the patch's exact data step."""
    g = sampling["split_gibbs"]
    if prior.normalisation.kind != "affine":
        raise ProductError(
            f"sampling.method = split_gibbs needs a prior with the affine normalisation, "
            f"this one has {prior.normalisation.kind!r}"
        )
    plan, step = patch_sampler(
        data, prior.normalisation.std, prior.normalisation.mean, prior.schedule,
        sweeps=int(g["sweeps"]), rho_start=float(g["rho_start"]),
        floor_fraction=float(g["floor_fraction"]), prior_steps=int(g["prior_steps"]),
        last_ratio=float(g["prior_last_ratio"]), final_steps=int(g["final_steps"]),
        final_rho=float(g["final_rho"]), pad=int(sampling["shear_pad"]),
        tol=float(g["cg_tol"]), max_iter=int(g["cg_max_iter"]),
    )  # fmt: skip
    return _SplitGibbs(plan, read_denoiser_covariance(covariance_path, prior.npix), step)


def _load_problem(
    data_path: str | os.PathLike,
    model_path: str | os.PathLike,
    sampling: Mapping[str, Any],
    scaling: LikelihoodScaling,
    covariance_path: str | os.PathLike | None = None,
) -> _Problem:
    """Read the data patch and the prior, check that they fit, and build the sampler."""
    device = _device(sampling["device"])
    arrays, wcs = read_data_patch(data_path)
    data = shear_data(
        arrays["G1"],
        arrays["G2"],
        arrays["SIGMA"],
        arrays["MASK"],
        device=device,
        source=str(data_path),
    )
    prior = load_prior(model_path, device)
    n_bins, npix = data.g1.shape[0], data.g1.shape[-1]
    n_channels = prior.model.config.in_channels
    if (n_bins, npix) != (n_channels, prior.npix):
        raise ProductError(
            f"{data_path}: {n_bins} bins of {npix} x {npix} pixels, but the prior {model_path} "
            f"models {n_channels} bins of {prior.npix} x {prior.npix}"
        )
    speedups = Speedups.from_config(sampling)
    network = prepare_network(prior.model, device, sampling["precision"], speedups)
    if _method(sampling) == "split_gibbs":
        if covariance_path is None:
            raise ValueError("sampling.method = split_gibbs needs the denoiser covariance file")
        parts = _split_gibbs_parts(data, prior, sampling, covariance_path)
        steps = list(parts.plan.levels)
        return _Problem(data, wcs, prior, network, steps, None, device, parts)
    steps = timestep_sequence(int(prior.schedule.T), sampling["n_steps"], sampling["step_power"])
    guidance = dps_guidance(
        data,
        prior.to_kappa,
        prior.schedule.alphas_cumprod,
        steps,
        scaling=scaling,
        step=sampling["step"],
        zeta=sampling["zeta"],
        pad=sampling["shear_pad"],
    )
    return _Problem(data, wcs, prior, network, steps, guidance, device)


def _sampling_in_effect(
    sampling: Mapping[str, Any], scaling: LikelihoodScaling, n_bins: int
) -> dict[str, Any]:
    """``sampling`` with the run's A(t) in place of its ``scaled``, ``t_bar``, ``sigma_t``.

    The scaling may come from a file or the caller rather than the config, and only its
    per-bin values change a draw, so those are what the resume key records.
    """
    if _method(sampling) != "dps":
        return dict(sampling)
    draws = {k: v for k, v in sampling.items() if k not in ("scaled", "t_bar", "sigma_t")}
    draws["scaled"] = scaling.scaled
    if scaling.scaled:
        t_bar, sigma_t = scaling.per_bin(n_bins)
        draws.update(t_bar=t_bar.tolist(), sigma_t=sigma_t.tolist())
    return draws


def _draw_batch(
    problem: _Problem, seed: int, size: int, eta: float, pad: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """κ ``[size, bin, row, col]``, χ² ``[size, bin]`` and drift ``[step, size, bin]``."""
    n_bins, npix = problem.shape
    generator = torch.Generator(device=problem.device).manual_seed(seed)
    abar = problem.prior.schedule.alphas_cumprod
    diagnostic = TrajectoryDiagnostic(abar)
    if problem.split_gibbs is not None:
        parts = problem.split_gibbs

        def record(i: int, t: int, z: torch.Tensor, x: torch.Tensor) -> None:
            diagnostic(i, t, float(abar[t]) ** 0.5 * z, x)  # z at level t, as x_t = √ᾱ_t z

        x = split_gibbs_sample(
            problem.network, problem.prior.schedule, parts.covariance, parts.data_step,
            (size, n_bins, npix, npix), parts.plan, generator, callback=record,
        )  # fmt: skip
    else:
        x = _dps_batch(problem, size, eta, generator, diagnostic)
    with torch.no_grad():
        kappa = problem.prior.to_kappa(x.float())
        c2 = chi2(kappa, problem.data, pad=pad)
    return kappa, c2, diagnostic.drift()


def _dps_batch(
    problem: _Problem,
    size: int,
    eta: float,
    generator: torch.Generator,
    diagnostic: TrajectoryDiagnostic,
) -> torch.Tensor:
    """One batch of DPS draws ``x``."""
    n_bins, npix = problem.shape
    return ddim_sample(
        problem.network,
        problem.prior.schedule,
        (size, n_bins, npix, npix),
        problem.steps,
        eta,
        generator,
        guidance=problem.guidance,
        callback=diagnostic,
    )


def _draw_samples(
    problem: _Problem,
    sampling: Mapping[str, Any],
    seed: int,
    patch_id: int,
    partial: Path,
    key: str,
) -> dict[str, list[np.ndarray]]:
    """Draw the patch's samples batch by batch, resuming from and keeping ``partial``."""
    plan = _batch_plan(int(sampling["n_samples"]), int(sampling["batch_size"]))
    done, n_resumed = _no_samples(), 0
    if sampling["checkpoint_batches"]:
        done, n_resumed = _load_partial(partial, key, plan)
    log.info(
        "patch %d: %s, %d samples in batches of %d, %d network evaluations (NFE), device %s, %s",
        patch_id,
        _method(sampling),
        int(sampling["n_samples"]),
        int(sampling["batch_size"]),
        problem.nfe,
        problem.device,
        sampling["precision"],
    )
    dof = problem.data.dof.cpu().numpy()
    for i, (first, size) in enumerate(plan[n_resumed:], start=n_resumed):
        t0 = time.perf_counter()
        kappa, c2, drift = _draw_batch(
            problem,
            posterior_seed(seed, patch_id, first, size),
            size,
            sampling.get("eta", 0.0),  # DPS only
            sampling["shear_pad"],
        )
        for j in range(size):
            done["kappa"].append(kappa[j].cpu().numpy().astype(np.float32))
            done["chi2"].append(c2[j].cpu().numpy().astype(np.float64))
            done["drift"].append(drift[:, j].astype(np.float64))
        log.info(
            "samples %d-%d in %.1f s, chi2/dof %s",
            first,
            first + size - 1,
            time.perf_counter() - t0,
            np.round(c2.mean(0).cpu().numpy() / dof, 3).tolist(),
        )
        if sampling["checkpoint_batches"] and i + 1 < len(plan):
            _save_partial(partial, key, done, plan[: i + 1])
    return done


def _summaries(done: Mapping[str, list[np.ndarray]], dof: np.ndarray) -> dict[str, np.ndarray]:
    """SAMPLES, their MEAN and STD, CHI2 (per dof) and the mean DRIFT of the drawn samples."""
    samples = np.stack(done["kappa"])  # [sample, bin, row, col]
    mean = samples.astype(np.float64).mean(axis=0)
    std = (
        samples.astype(np.float64).std(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(mean)
    )
    return {
        "SAMPLES": samples,
        "MEAN": mean,
        "STD": std,
        "CHI2": np.stack(done["chi2"]) / dof,  # [sample, bin]
        "DRIFT": np.stack(done["drift"]).mean(axis=0),  # [step, bin]
    }


def _product_cards(
    sampling: Mapping[str, Any],
    scaling: LikelihoodScaling,
    patch_id: int,
    problem: _Problem,
    chi2_dof: np.ndarray,
    runtime: float,
) -> dict[str, Any]:
    """The run's header cards: patch, sampler settings, A(t), run time and χ²/dof per bin."""
    n_bins, _ = problem.shape
    cards: dict[str, Any] = {
        "PATCHID": int(patch_id),
        "METHOD": _method(sampling),
        "NSAMPLE": int(sampling["n_samples"]),
        "NFE": problem.nfe,
        "NSTEPT": int(problem.prior.schedule.T),
    }
    if problem.split_gibbs is not None:
        g, step = sampling["split_gibbs"], problem.split_gibbs.data_step
        cards.update(
            SWEEPS=int(g["sweeps"]),
            RHOSTART=float(g["rho_start"]),
            FLOORFR=float(g["floor_fraction"]),
            RHOFLOOR=round(step.deflation, 6),
            PRSTEPS=int(g["prior_steps"]),
            PRLAST=float(g["prior_last_ratio"]),
            FINSTEPS=int(g["final_steps"]),
            FINRHO=float(g["final_rho"]),
            CGTOL=float(g["cg_tol"]),
            CGITER=round(float(np.mean(step.iterations)), 2),
        )
    else:
        cards.update(
            STEPPOW=float(sampling["step_power"]),
            ETA=float(sampling["eta"]),
            **scaling.cards(n_bins),
            STEPFORM=sampling["step"],
            ZETA=float(sampling["zeta"]),
        )
    cards.update(
        PRECISN=sampling["precision"],
        SHPAD=int(sampling["shear_pad"]),
        RUNTIME=round(runtime, 2),
        DEVICE=problem.device.type,
    )
    for b in range(n_bins):
        cards[f"CHI2DOF{b + 1}"] = float(chi2_dof[:, b].mean())
    return cards


def _write_posterior(
    output_path: Path,
    maps: Mapping[str, np.ndarray],
    problem: _Problem,
    header: fits.Header,
    storage: str,
) -> None:
    """Write MEAN, STD, SAMPLES (unless ``storage`` is ``"none"``), CHI2, DRIFT and TSTEPS."""
    wcs = problem.wcs
    hdus = [image_hdu("MEAN", maps["MEAN"], wcs), image_hdu("STD", maps["STD"], wcs)]
    if storage != "none":
        hdus.append(_samples_hdu(maps["SAMPLES"], wcs, storage))
    hdus += [
        image_hdu("CHI2", maps["CHI2"], {"BUNIT": "chi2/dof"}),
        image_hdu("DRIFT", maps["DRIFT"], {"COMMENT": "rms(x_t)/expected, mean over samples"}),
        image_hdu("TSTEPS", np.asarray(problem.steps), dtype=np.int32),
    ]
    write_fits(output_path, hdus, primary_header=header)


def sample_patch(
    data_path: str | os.PathLike,
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    patch_id: int,
    threads: int = 1,
    scaling_path: str | os.PathLike | None = None,
    scaling: LikelihoodScaling | None = None,
    covariance_path: str | os.PathLike | None = None,
) -> Path:
    """Draw posterior samples of one data patch and write the posterior product.

    Parameters
    ----------
    data_path
        ``results/data/patch_{id}.fits`` (HDUs G1, G2, SIGMA, MASK ``[bin, row, col]``).
    model_path
        Prior checkpoint (``results/prior/model.pt``).
    output_path
        ``results/posterior/patch_{id}.fits``.
    config
        The validated configuration (``seed`` and the ``sampling`` section are used).
    patch_id
        Patch id, which with ``config['seed']`` and the sample index seeds the noise; it must
        be the data file's ``PATCHID``.
    threads
        CPU threads for torch.
    scaling_path
        ``results/validation/scaling.fits``: its per-bin ``t_bar`` / ``sigma_t`` (the
        TARP search on the mocks) replace those of ``config['sampling']``.
    scaling
        The likelihood scaling to sample with, in place of the configuration's (a
        validation run on the mocks).
    covariance_path
        ``results/prior/denoiser_covariance.fits`` (``sampling.method: split_gibbs``).
    Returns
    -------
    Path
        ``output_path``.

    Raises
    ------
    ValueError
        If both ``scaling`` and ``scaling_path`` are given, or split Gibbs lacks its file.
    ProductError
        If the data file is not patch ``patch_id``'s, or descends from another catalogue
        than ``scaling_path``, or does not fit the prior.
    """
    if scaling is not None and scaling_path is not None:
        raise ValueError("give scaling or scaling_path, not both")
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, int(threads)))
    s = config["sampling"]
    # the data's catalogue; a scaling tuned on another catalogue's mocks is refused
    identity = check_same_catalogue(
        [data_path] if scaling_path is None else [data_path, scaling_path]
    )
    scaling = _resolve_scaling(s, scaling, scaling_path)
    _check_patch_id(data_path, patch_id)
    problem = _load_problem(data_path, model_path, s, scaling, covariance_path)
    output_path = Path(output_path)
    partial = output_path.with_name(output_path.name + ".partial.npz")
    in_effect = _sampling_in_effect(s, scaling, problem.shape[0])
    key = _resume_key(
        file_hash(data_path), problem.prior.hash, config["seed"], int(patch_id), in_effect
    )
    done = _draw_samples(problem, s, config["seed"], patch_id, partial, key)
    maps = _summaries(done, problem.data.dof.cpu().numpy())
    cards = _product_cards(
        s, scaling, patch_id, problem, maps["CHI2"], time.perf_counter() - t_start
    )
    seed = posterior_seed(config["seed"], patch_id)
    header = provenance(config, seed=seed, model_hash=problem.prior.hash, **cards, **identity)
    _write_posterior(output_path, maps, problem, header, s["save_samples"])
    partial.unlink(missing_ok=True)
    log.info(
        "wrote %s (chi2/dof per bin %s)", output_path, np.round(maps["CHI2"].mean(0), 3).tolist()
    )
    return output_path
