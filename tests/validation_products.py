"""Products of the validation stream as the stages write them, for the tests that read them.

The configuration of a small validation run (``validation_config``), per-pixel Gaussian toy
maps, posterior, truth and data products of mock patches, and a checkpoint of an untrained
prior; shared by test_stats, test_scaling_search, test_statistics, test_figures and
test_prior_draws.
"""

from __future__ import annotations

import numpy as np

from kappadiff import products

#: The catalogue identity every patch product carries (products.CATALOGUE_CARDS).
IDENTITY = {"SOURCE": "mock", "CATALOG": "synthetic.fits", "CATHASH": "0123456789abcdef"}

N_BINS = 4


def validation_config(npix=16, **overrides):
    """The config of a small validation run (``npix`` px at 16′); overrides go to ``validation``."""
    v = {
        "patches": [0, 1],
        "n_samples": 8,
        "n_steps": 3,
        "t_bar": [300, 500],
        "sigma_t": [20],
        "per_bin": False,
        "tarp_tolerance": 0.1,
        "power_tolerance": 0.3,
        "n_references": 2,
        "n_regions": 4,
        "block": 2,
        "n_alpha": 21,
        "n_bootstrap": 50,
        "n_ell_bins": 6,
        "n_ensemble_cutouts": 1000,
        "n_pdf_bins": 10,
        "n_peak_bins": 6,
        "figure_patch": None,
        "clusters": "",
        "n_clusters": 3,
        "mosaic_bin": 4,
    }
    v.update(overrides)
    return {
        "seed": 11,
        "sampling": {"eta": 1.0, "n_samples": 4, "n_steps": 50, "step_power": 3.0, "scaled": True,
                     "t_bar": 500, "sigma_t": 20, "save_samples": "none"},
        "layout": {"npix": npix, "pixel_scale_arcmin": 16.0, "patch_size_deg": npix * 16 / 60},
        "validation": v,
    }  # fmt: skip


def gaussian_maps(rng, n_patch, n_samples, npix=16, width=1.0):
    """Truth and posterior samples of a per-pixel Gaussian toy (width 1 = calibrated)."""
    mu = rng.normal(0.0, 2.0, size=(n_patch, N_BINS, npix, npix))
    truth = mu + rng.normal(size=mu.shape)
    samples = mu + width * rng.normal(size=(n_samples, *mu.shape))
    return truth, samples


def write_run(path, samples, scaling, n_steps=5):
    """A posterior product as the posterior stage writes it (the HDUs validation reads)."""
    cards = {"SCALED": bool(scaling["scaled"])}
    if scaling["scaled"]:
        for b in range(N_BINS):
            cards[f"TBAR{b + 1}"] = float(np.broadcast_to(scaling["t_bar"], (N_BINS,))[b])
            cards[f"SIGT{b + 1}"] = float(np.broadcast_to(scaling["sigma_t"], (N_BINS,))[b])
    t = np.linspace(999, 0, n_steps).astype(np.int32)
    drift = np.ones((n_steps, N_BINS)) * (1.0 if scaling["scaled"] else 1.5)
    products.write_fits(
        path,
        [
            products.image_hdu("MEAN", samples.mean(0)),
            products.image_hdu("STD", samples.std(0, ddof=1)),
            products.image_hdu("SAMPLES", samples),
            products.image_hdu("DRIFT", drift),
            products.image_hdu("TSTEPS", t, dtype=np.int32),
        ],
        primary_header=products.provenance(None, **cards, **IDENTITY),
    )


def write_kappa(path, kappa):
    cards = products.provenance(None, **IDENTITY)
    products.write_fits(path, [products.image_hdu("KAPPA", kappa)], primary_header=cards)


def write_candidates(directory, truth, runs):
    """Truth files and the products of candidate runs ``{"t{t_bar}_s20": samples}``."""
    n_patch = truth.shape[0]
    truth_paths = [directory / f"truth_{p}.fits" for p in range(n_patch)]
    for p, path in enumerate(truth_paths):
        write_kappa(path, truth[p])
    paths = {}
    for run, samples in runs.items():
        scaling = {"scaled": True, "t_bar": float(run[1:4]), "sigma_t": 20.0}
        paths[run] = [directory / f"{run}_{p}.fits" for p in range(n_patch)]
        for p, path in enumerate(paths[run]):
            write_run(path, samples[:, p], scaling)
    return paths, truth_paths


def write_masks(directory, truth, mask=None):
    """Data products (HDU MASK) of each patch of ``truth [patch, bin, n, n]``; all observed."""
    mask = np.ones_like(truth) if mask is None else mask
    paths = []
    for p in range(truth.shape[0]):
        paths.append(directory / f"data_{p:04d}.fits")
        products.write_fits(
            paths[-1],
            [products.image_hdu("MASK", mask[p])],
            primary_header=products.provenance(None, **IDENTITY),
        )
    return paths


def tiny_prior(path):
    """A checkpoint of an untrained 16 px, 4-bin prior (κ scale 0.02)."""
    import torch

    from kappadiff.diffusion.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from kappadiff.diffusion.data import Normalisation
    from kappadiff.diffusion.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNetConfig(in_channels=N_BINS, base_channels=8, channel_mults=(1, 2),
                      num_res_blocks=1, attention_levels=(1,))  # fmt: skip
    norm = Normalisation("affine", torch.zeros(N_BINS), torch.full((N_BINS,), 0.02),
                         torch.zeros(N_BINS))  # fmt: skip
    state = {"format": CHECKPOINT_FORMAT, "unet": unet.to_dict(), "ema": UNet(unet).state_dict(),
             "schedule": {"name": "sigmoid", "T": 1000}, "normalisation": norm.to_dict(),
             "npix": 16, "step": 0}  # fmt: skip
    save_checkpoint(path, state)
    return path
