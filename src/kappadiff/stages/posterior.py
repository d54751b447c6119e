"""Stage ``sample_patch``: DPS posterior samples of one data patch.

Reads ``results/data/patch_{id}.fits`` and the prior checkpoint, draws
``sampling.n_samples`` posterior samples in batches of ``sampling.batch_size`` with the
prior's reverse diffusion guided by the shear likelihood (:mod:`kappadiff.diffusion.dps`),
and writes ``results/posterior/patch_{id}.fits``: MEAN, STD, optionally SAMPLES
``[sample, bin, row, col]``, CHI2 ``[sample, bin]``, the trajectory diagnostic DRIFT
``[step, bin]`` with its timesteps TSTEPS, all with the data patch's TAN WCS.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from ..catalogue.io import read_data_patch
from ..config import without_speed_keys
from ..diffusion.checkpoint import load_prior
from ..diffusion.dps import TrajectoryDiagnostic, chi2, dps_guidance, shear_data
from ..diffusion.sampler import ddim_sample, timestep_sequence
from ..diffusion.speed import Speedups, prepare_network
from ..products import (
    ProductError,
    atomic_output,
    check_same_catalogue,
    file_hash,
    image_hdu,
    load_npy,
    provenance,
    write_fits,
)
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
    sampling = {k: v for k, v in without_speed_keys(config["sampling"]).items() if k != "patches"}
    return {"seed": config["seed"], "sampling": sampling}


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

    ``sampling`` is the section in effect (a tuned scaling already in ``t_bar``/``sigma_t``).
    """
    # the GPU speed switches change no draw either (kappadiff.config.SPEED_KEYS)
    draws = {k: v for k, v in without_speed_keys(sampling).items() if k not in NOT_IN_RESUME_KEY}
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


def sample_patch(
    data_path: str | os.PathLike,
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: Mapping[str, Any],
    patch_id: int,
    threads: int = 1,
    scaling_path: str | os.PathLike | None = None,
) -> Path:
    """Draw DPS posterior samples of one data patch and write the posterior product.

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
        Patch id, which with ``config['seed']`` and the sample index seeds the noise.
    threads
        CPU threads for torch.
    scaling_path
        ``results/validation/scaling.fits``: its per-bin ``t_bar`` / ``sigma_t`` (the
        validation stage's TARP search) replace ``sampling.t_bar`` / ``sampling.sigma_t``.

    Returns
    -------
    Path
        ``output_path``.
    """
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, int(threads)))
    s = dict(config["sampling"])
    # the catalogue the data descend from; a scaling tuned on another catalogue's mocks
    # is refused
    identity = check_same_catalogue(
        [data_path] if scaling_path is None else [data_path, scaling_path]
    )
    if scaling_path is not None:
        from .validation import read_scaling  # the validation stage owns the scaling file

        tuned = read_scaling(scaling_path)
        s.update(scaled=True, t_bar=tuned["t_bar"], sigma_t=tuned["sigma_t"])
        log.info(
            "likelihood scaling from %s: t_bar %s, sigma_t %s",
            scaling_path,
            s["t_bar"],
            s["sigma_t"],
        )
    output_path = Path(output_path)
    device = _device(s["device"])

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
    abar = prior.schedule.alphas_cumprod
    n_timesteps = int(prior.schedule.T)
    n_bins, npix = data.g1.shape[0], data.g1.shape[-1]
    n_channels = prior.model.config.in_channels
    if (n_bins, npix) != (n_channels, prior.npix):
        raise ProductError(
            f"{data_path}: {n_bins} bins of {npix} x {npix} pixels, but the prior {model_path} "
            f"models {n_channels} bins of {prior.npix} x {prior.npix}"
        )
    steps = timestep_sequence(n_timesteps, s["n_steps"], s["step_power"])
    guidance = dps_guidance(
        data,
        prior.to_kappa,
        abar,
        steps,
        scaled=s["scaled"],
        t_bar=s["t_bar"],
        sigma_t=s["sigma_t"],
        step=s["step"],
        zeta=s["zeta"],
        pad=s["shear_pad"],
    )
    network = prepare_network(prior.model, device, s["precision"], Speedups.from_config(s))

    seed = posterior_seed(config["seed"], patch_id)
    model_hash = prior.hash
    partial = output_path.with_name(output_path.name + ".partial.npz")
    key = _resume_key(file_hash(data_path), model_hash, config["seed"], int(patch_id), s)
    n_samples, batch = int(s["n_samples"]), int(s["batch_size"])
    plan = _batch_plan(n_samples, batch)
    done, n_resumed = _no_samples(), 0
    if s["checkpoint_batches"]:
        done, n_resumed = _load_partial(partial, key, plan)

    log.info(
        "patch %d: %d samples in batches of %d, %d steps (NFE), device %s, %s",
        patch_id,
        n_samples,
        batch,
        len(steps),
        device,
        s["precision"],
    )
    for i, (first, size) in enumerate(plan[n_resumed:], start=n_resumed):
        generator = torch.Generator(device=device).manual_seed(
            posterior_seed(config["seed"], patch_id, first, size)
        )
        diagnostic = TrajectoryDiagnostic(abar)
        t0 = time.perf_counter()
        x = ddim_sample(
            network,
            prior.schedule,
            (size, n_bins, npix, npix),
            steps,
            s["eta"],
            generator,
            guidance=guidance,
            callback=diagnostic,
        )
        with torch.no_grad():
            kappa = prior.to_kappa(x.float())
            c2 = chi2(kappa, data, pad=s["shear_pad"])
        drift = diagnostic.drift()  # [step, B, bin]
        for j in range(size):
            done["kappa"].append(kappa[j].cpu().numpy().astype(np.float32))
            done["chi2"].append(c2[j].cpu().numpy().astype(np.float64))
            done["drift"].append(drift[:, j].astype(np.float64))
        log.info(
            "samples %d-%d in %.1f s, chi2/dof %s",
            first,
            first + size - 1,
            time.perf_counter() - t0,
            np.round(c2.mean(0).cpu().numpy() / data.dof.cpu().numpy(), 3).tolist(),
        )
        if s["checkpoint_batches"] and i + 1 < len(plan):
            _save_partial(partial, key, done, plan[: i + 1])

    samples = np.stack(done["kappa"])  # [sample, bin, row, col]
    chi2_dof = np.stack(done["chi2"]) / data.dof.cpu().numpy()  # [sample, bin]
    drift_mean = np.stack(done["drift"]).mean(axis=0)  # [step, bin]
    mean = samples.astype(np.float64).mean(axis=0)
    std = samples.astype(np.float64).std(axis=0, ddof=1) if n_samples > 1 else np.zeros_like(mean)

    t_bar = np.broadcast_to(np.asarray(s["t_bar"], dtype=float), (n_bins,))
    sigma_t = np.broadcast_to(np.asarray(s["sigma_t"], dtype=float), (n_bins,))
    cards: dict[str, Any] = {
        "PATCH": int(patch_id),
        "NSAMPLE": n_samples,
        "NFE": len(steps),
        "NSTEPT": n_timesteps,
        "STEPPOW": float(s["step_power"]),
        "ETA": float(s["eta"]),
        "SCALED": bool(s["scaled"]),
        "STEPFORM": s["step"],
        "PRECISN": s["precision"],
        "SHPAD": int(s["shear_pad"]),
        "RUNTIME": round(time.perf_counter() - t_start, 2),
        "DEVICE": device.type,
        "ZETA": float(s["zeta"]),
    }
    for b in range(n_bins):
        if s["scaled"]:
            cards[f"TBAR{b + 1}"] = float(t_bar[b])
            cards[f"SIGT{b + 1}"] = float(sigma_t[b])
        cards[f"CHI2DOF{b + 1}"] = float(chi2_dof[:, b].mean())
    header = provenance(config, seed=seed, model_hash=model_hash, **cards, **identity)

    hdus = [image_hdu("MEAN", mean, wcs), image_hdu("STD", std, wcs)]
    if s["save_samples"] != "none":
        hdus.append(_samples_hdu(samples, wcs, s["save_samples"]))
    hdus += [
        image_hdu("CHI2", chi2_dof, {"BUNIT": "chi2/dof"}),
        image_hdu("DRIFT", drift_mean, {"COMMENT": "rms(x_t)/expected, mean over samples"}),
        image_hdu("TSTEPS", np.asarray(steps), dtype=np.int32),
    ]
    write_fits(output_path, hdus, primary_header=header)
    partial.unlink(missing_ok=True)
    log.info("wrote %s (chi2/dof per bin %s)", output_path, np.round(chi2_dof.mean(0), 3).tolist())
    return output_path
