"""Figures. Each function returns a matplotlib Figure; the calling stage saves it.

Uses the non-interactive Agg backend, so figures are made on headless cluster nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "calibration_panels",
    "mosaic_maps",
    "patch_reconstructions",
    "prior_loss_curve",
    "prior_samples_grid",
    "prior_statistics_panels",
    "summary_statistics",
    "truth_posterior_maps",
]


def prior_loss_curve(losses: Sequence[float], smooth: int = 50) -> Figure:
    """Training loss per step and its running mean over ``smooth`` steps (log scale).

    Parameters
    ----------
    losses
        Weighted v-prediction loss of each optimiser step.
    smooth
        Width of the running mean, steps.
    """
    losses = np.asarray(losses, dtype=float)
    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(steps, losses, lw=0.5, alpha=0.4, color="C0", label="per step")
    w = min(smooth, len(losses))
    if w > 1:
        running = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], running, color="C1", label=f"mean of {w} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted v-loss")
    ax.legend()
    return fig


def prior_samples_grid(
    samples: np.ndarray, references: np.ndarray, bin_labels: Sequence[str] | None = None
) -> Figure:
    """Prior samples beside held-out cut-outs: one row per bin, samples left, references right.

    Parameters
    ----------
    samples, references
        κ maps ``[n, bin, row, col]`` (the same ``bin``); shown with row 0 at the bottom
        (north up) and, per bin, one symmetric colour scale from the references.
    bin_labels
        Row labels, default "bin 1" … .
    """
    n_s, n_r, n_bins = len(samples), len(references), samples.shape[1]
    labels = list(bin_labels) if bin_labels is not None else [f"bin {b + 1}" for b in range(n_bins)]
    cols = n_s + n_r
    fig, axes = plt.subplots(
        n_bins, cols, figsize=(1.3 * cols, 1.3 * n_bins + 0.4), squeeze=False, layout="constrained"
    )
    for b in range(n_bins):
        lim = float(np.percentile(np.abs(references[:, b]), 99.5)) or 1.0
        for j in range(cols):
            ax = axes[b, j]
            img = samples[j, b] if j < n_s else references[j - n_s, b]
            ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title("prior" if j < n_s else "held out", fontsize=8)
        axes[b, 0].set_ylabel(labels[b], fontsize=8)
    return fig


# --- validation on mocks (figures 1-4 of the validation report) ------------------------


def prior_statistics_panels(results: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """The prior against the simulations: C_ℓ ratio, one-point PDF and peak counts per bin.

    Parameters
    ----------
    results
        ``{"prior": ..., "simulations": ...}`` with ``ell``, ``cl``, ``cl_err``, ``pdf``,
        ``pdf_kappa``, ``peaks`` and ``peak_kappa``
        (:func:`kappadiff.stats.compare_prior`).
    """
    prior, sims = results["prior"], results["simulations"]
    n_bins = prior["cl"].shape[0]
    fig, axes = plt.subplots(
        n_bins, 3, figsize=(10, 2.4 * n_bins + 0.4), squeeze=False, layout="constrained"
    )
    ratio = prior["cl"] / sims["cl"]
    err = ratio * np.hypot(prior["cl_err"] / prior["cl"], sims["cl_err"] / sims["cl"])
    for b in range(n_bins):
        ax = axes[b, 0]
        ax.errorbar(prior["ell"], ratio[b], yerr=err[b], color="C0", marker="o", ms=3, lw=1)
        ax.axhline(1.0, color="k", lw=0.8)
        for y in (0.8, 1.2):
            ax.axhline(y, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_ylabel(f"bin {b + 1}\nC_ℓ prior / simulations")
        for col, key, label in ((1, "pdf", "PDF"), (2, "peaks", "peaks per map")):
            for name, r, color in (("simulations", sims, "k"), ("prior draws", prior, "C0")):
                y = r[key][b]
                if key == "pdf":
                    axes[b, col].semilogy(r["pdf_kappa"][b], np.where(y > 0, y, np.nan),
                                          color=color, label=name)  # fmt: skip
                else:
                    axes[b, col].plot(r["peak_kappa"][b], y, color=color, drawstyle="steps-mid",
                                      label=name)  # fmt: skip
            axes[b, col].set_ylabel(label)
    axes[0, 1].legend(fontsize=7)
    for j, xl in enumerate(("ℓ", "κ", "peak height κ")):
        axes[-1, j].set_xlabel(xl)
    return fig


#: Colours and labels of the methods compared with the truth (the truth is black).
METHOD_STYLE = {
    "samples": ("C0", "DPS samples"),
    "mean": ("C1", "DPS mean"),
    "wiener": ("C2", "Wiener"),
    "wiener_tomo": ("C4", "tomographic Wiener"),
    "ks": ("C3", "Kaiser-Squires"),
    "truth": ("k", "truth"),
}


def _map_panel(ax, img: np.ndarray, vmin: float, vmax: float, cmap: str = "RdBu_r"):
    im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def calibration_panels(drift: Mapping, coverage: Mapping, power: Mapping | None = None) -> Figure:
    """Figure 1: trajectory diagnostic, TARP coverage and power of scaled and unscaled DPS.

    Parameters
    ----------
    drift
        ``{run: (timesteps [step], drift [step, bin])}``: rms(x_t) over its expected value
        along the reverse process (1 = on the diffusion's marginals).
    coverage
        ``{run: {(reference kind, bin): TarpResult}}`` with bin 0 the joint TARP; the joint
        curves are drawn, one panel per reference kind, with their 16-84 % bootstrap band.
    power
        ``{run: (ell [ℓ], ratio [bin, ℓ], error)}``: the samples' C_ℓ over the truths', and
        the power check's measure of it (largest over bins), for the legend; a last panel
        when given.
    """
    kinds = sorted({k for per in coverage.values() for k, _ in per})
    n_panels = 1 + len(kinds) + (power is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 3.6), layout="constrained")
    ax = axes[0]
    for i, (run, (t, d)) in enumerate(drift.items()):
        d = np.asarray(d)
        for b in range(d.shape[1]):
            ax.plot(
                t,
                d[:, b],
                color=f"C{i}",
                lw=1,
                alpha=0.4 + 0.6 * (b == d.shape[1] - 1),
                label=run if b == d.shape[1] - 1 else None,
            )
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlim(max(np.max(t) for t, _ in drift.values()), 0)
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("rms$(x_t)$ / expected")
    ax.set_title("trajectory (bins 1-4, bin 4 bold)", fontsize=9)
    ax.legend(fontsize=8)
    for ax, kind in zip(axes[1 : 1 + len(kinds)], kinds, strict=True):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        for i, (run, per) in enumerate(coverage.items()):
            r = per[kind, 0]
            ax.fill_between(r.alpha, r.ecp_lo, r.ecp_hi, color=f"C{i}", alpha=0.25, lw=0)
            ax.plot(r.alpha, r.ecp, color=f"C{i}", label=f"{run}: max|ECP-α| = {r.max_error:.2f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("credibility level α")
        ax.set_ylabel("expected coverage")
        ax.set_title(f"TARP, {kind} references", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    if power is not None:
        ax = axes[-1]
        for i, (run, (ell, ratio, err)) in enumerate(power.items()):
            ratio = np.asarray(ratio)
            for b in range(ratio.shape[0]):
                last = b == ratio.shape[0] - 1
                ax.plot(
                    ell,
                    ratio[b],
                    color=f"C{i}",
                    lw=1,
                    alpha=0.4 + 0.6 * last,
                    label=f"{run}: mean|ratio-1| ≤ {err:.2f}" if last else None,
                )
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("ℓ")
        ax.set_ylabel("$C_\\ell$(samples) / $C_\\ell$(truth)")
        ax.set_title("power of the samples (bins 1-4, bin 4 bold)", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def truth_posterior_maps(
    truth: np.ndarray, mean: np.ndarray, std: np.ndarray, mask: np.ndarray, title: str
) -> Figure:
    """Figure 2 (maps): truth, posterior mean, posterior std and mask, one row per bin.

    All arrays ``[bin, row, col]``; truth and mean share a symmetric colour scale per bin.
    """
    n_bins = truth.shape[0]
    fig, axes = plt.subplots(
        n_bins, 4, figsize=(8.4, 2.1 * n_bins + 0.4), squeeze=False, layout="constrained"
    )
    for b in range(n_bins):
        lim = float(np.percentile(np.abs(truth[b]), 99.5)) or 1.0
        im = _map_panel(axes[b, 0], truth[b], -lim, lim)
        _map_panel(axes[b, 1], mean[b], -lim, lim)
        fig.colorbar(im, ax=axes[b, :2], shrink=0.8, label="κ")
        im = _map_panel(axes[b, 2], std[b], 0, float(np.max(std[b])) or 1.0, cmap="viridis")
        fig.colorbar(im, ax=axes[b, 2], shrink=0.8, label="σ_κ")
        _map_panel(axes[b, 3], mask[b], 0, 1, cmap="gray")
        axes[b, 0].set_ylabel(f"bin {b + 1}")
    for j, name in enumerate(
        ("truth", "posterior mean", "posterior std", "mask (white = observed)")
    ):
        axes[0, j].set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def summary_statistics(
    results: Mapping[str, Mapping[str, np.ndarray]],
    ensemble: Mapping[str, np.ndarray] | None = None,
) -> Figure:
    """Figure 2 (statistics): ρ_c(ℓ), C_ℓ, one-point PDF and peak counts per bin.

    Parameters
    ----------
    results
        ``{method: {"ell", "cl", "rho", "ell_half", "pdf", "pdf_kappa", "peaks",
        "peak_kappa", ("cl_lo", "cl_hi" for samples), ("rho_boot")}}`` as made by
        :func:`kappadiff.stats.compare_statistics`; the truth is drawn in black,
        and the 16-84 % range of ρ_c over patch resamplings is shaded for the posterior
        mean and Wiener.
    ensemble
        ``{"cl", "cl_lo", "cl_hi"}`` ``[bin, n_ell]`` on the same ℓ bins
        (:func:`kappadiff.stats.ensemble_power_band`): the simulations' mean C_ℓ,
        dashed, and the band of patch-set averages, hatched, in the C_ℓ panels.
    """
    n_bins = next(iter(results.values()))["cl"].shape[0]
    fig, axes = plt.subplots(
        n_bins, 4, figsize=(13, 2.6 * n_bins + 0.4), squeeze=False, layout="constrained"
    )
    for method, r in results.items():
        color, label = METHOD_STYLE.get(method, ("C7", method))
        lw = 1.6 if method == "truth" else 1.1
        ell = r["ell"]
        for b in range(n_bins):
            if method != "truth":
                axes[b, 0].semilogx(
                    ell,
                    r["rho"][b],
                    color=color,
                    lw=lw,
                    label=f"{label} (ℓ₀.₅ = {r['ell_half'][b]:.0f})",
                )
                if "rho_boot" in r and method in ("mean", "wiener"):
                    lo, hi = np.percentile(r["rho_boot"][:, b], [16.0, 84.0], axis=0)
                    axes[b, 0].fill_between(ell, lo, hi, color=color, alpha=0.2, lw=0)
            norm = ell * (ell + 1) / (2 * np.pi)
            axes[b, 1].loglog(ell, norm * np.abs(r["cl"][b]), color=color, lw=lw, label=label)
            if "cl_lo" in r:
                axes[b, 1].fill_between(
                    ell, norm * r["cl_lo"][b], norm * r["cl_hi"][b], color=color, alpha=0.25, lw=0
                )
            axes[b, 2].semilogy(
                r["pdf_kappa"][b],
                np.where(r["pdf"][b] > 0, r["pdf"][b], np.nan),
                color=color,
                lw=lw,
                label=label,
            )
            axes[b, 3].plot(
                r["peak_kappa"][b],
                r["peaks"][b],
                color=color,
                lw=lw,
                drawstyle="steps-mid",
                label=label,
            )
    if ensemble is not None:
        ell = next(iter(results.values()))["ell"]
        norm = ell * (ell + 1) / (2 * np.pi)
        for b in range(n_bins):
            axes[b, 1].loglog(ell, norm * ensemble["cl"][b], color="0.4", lw=1.0, ls="--",
                              label="simulations (95 % of patch sets)")  # fmt: skip
            axes[b, 1].fill_between(
                ell, norm * ensemble["cl_lo"][b], norm * ensemble["cl_hi"][b],
                facecolor="none", edgecolor="0.5", hatch="///", lw=0,
            )  # fmt: skip
    for b in range(n_bins):
        axes[b, 0].axhline(0.5, color="k", lw=0.6, ls=":")
        axes[b, 0].set_ylim(-0.1, 1.05)
        axes[b, 0].set_ylabel(f"bin {b + 1}\nρ_c(ℓ)")
        axes[b, 1].set_ylabel("ℓ(ℓ+1)C_ℓ/2π")
        axes[b, 2].set_ylabel("PDF")
        axes[b, 3].set_ylabel("peaks per patch")
        axes[b, 0].legend(fontsize=6)
    axes[0, 1].legend(fontsize=7)
    for j, xl in enumerate(("ℓ", "ℓ", "κ", "peak height κ")):
        axes[-1, j].set_xlabel(xl)
    return fig


def patch_reconstructions(
    maps: Mapping[str, np.ndarray],
    clusters: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    cluster_label: str,
) -> Figure:
    """Figure 3: one patch reconstructed by each method, with cluster positions.

    Parameters
    ----------
    maps
        ``{panel title: [bin, row, col]}``, e.g. DPS mean, Wiener, KS, DPS std; a title
        containing "std" gets its own (sequential) colour scale.
    clusters
        Per bin ``(row, col, weight)`` pixel positions; marker area grows with weight.
    title, cluster_label
        Figure title and legend label of the markers.
    """
    names = list(maps)
    n_bins = next(iter(maps.values())).shape[0]
    fig, axes = plt.subplots(
        n_bins,
        len(names),
        figsize=(2.3 * len(names) + 0.8, 2.2 * n_bins + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for b in range(n_bins):
        ref = maps[names[0]][b]
        lim = float(np.percentile(np.abs(ref), 99.5)) or 1.0
        row, col, weight = clusters[b]
        size = 12 + 60 * (np.asarray(weight) / (np.max(weight) if len(weight) else 1.0))
        for j, name in enumerate(names):
            img = maps[name][b]
            if "std" in name:
                im = _map_panel(axes[b, j], img, 0, float(np.max(img)) or 1.0, cmap="viridis")
            else:
                im = _map_panel(axes[b, j], img, -lim, lim)
            axes[b, j].scatter(
                col,
                row,
                s=size,
                facecolors="none",
                edgecolors="k",
                lw=0.8,
                label=cluster_label if (b == 0 and j == 0) else None,
            )
            axes[b, j].set_xlim(-0.5, img.shape[1] - 0.5)
            axes[b, j].set_ylim(-0.5, img.shape[0] - 0.5)
            if b == 0:
                axes[b, j].set_title(name, fontsize=9)
        fig.colorbar(im, ax=axes[b, -1], shrink=0.8)
        axes[b, 0].set_ylabel(f"bin {b + 1}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return fig


def mosaic_maps(mean: np.ndarray, std: np.ndarray, bin_label: str) -> Figure:
    """Figure 4: HEALPix posterior mean and std over the footprint (skyproj, McBryde).

    ``mean`` and ``std`` are RING maps ``[npix]`` with ``healpy.UNSEEN`` (or NaN) outside
    the covered area; the projection zooms onto the covered pixels.
    """
    import healpy as hp
    import skyproj

    fig, axes = plt.subplots(1, 2, figsize=(15, 5), layout="constrained")
    for ax, m, name, cmap in (
        (axes[0], mean, "posterior mean", "RdBu_r"),
        (axes[1], std, "posterior std", "viridis"),
    ):
        # UNSEEN survives a float32 round trip only approximately: compare with a margin
        m = np.asarray(m, dtype=np.float64)
        m = np.where(np.isfinite(m) & (m > 0.5 * hp.UNSEEN), m, hp.UNSEEN)
        seen = m[m != hp.UNSEEN]
        if cmap == "RdBu_r":
            lim = float(np.percentile(np.abs(seen), 99.5)) if seen.size else 1.0
            vmin, vmax = -lim, lim
        else:
            vmin, vmax = np.percentile(seen, [0.5, 99.5]) if seen.size else (0.0, 1.0)
        sp = skyproj.McBrydeSkyproj(ax=ax)
        im, *_ = sp.draw_hpxmap(m, zoom=bool(seen.size), vmin=vmin, vmax=vmax, cmap=cmap)
        sp.draw_colorbar(label="κ" if cmap == "RdBu_r" else "σ_κ")
        ax.set_title(f"{name}, {bin_label}", fontsize=10)
    return fig
