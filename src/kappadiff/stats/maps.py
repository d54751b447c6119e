"""One-point statistics and peaks of flat convergence maps: PDF, peak counts, κ-bin edges.

Maps are ``[..., ny, nx]``; a mask (1 observed, 0 not) restricts every count to the observed
pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["find_peaks", "kappa_edges", "one_point", "pdf", "peak_counts", "truth_peaks"]


def pdf(
    maps: np.ndarray, edges: Sequence[float], mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-point PDF (normalised histogram) of the pixel values of each map.

    Parameters
    ----------
    maps
        ``[..., ny, nx]``.
    edges
        Histogram bin edges ``[n_bins + 1]``, increasing.
    mask
        Optional ``[..., ny, nx]`` (broadcast with ``maps``): only pixels with mask > 0 count.

    Returns
    -------
    (centres, density)
        ``centres [n_bins]`` and ``density [..., n_bins]``: counts / (N_pix Δ), with N_pix
        the pixels counted (values outside the edges included), so the density integrates
        to the fraction of pixels within the edges.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be at least two strictly increasing values")
    maps = np.asarray(maps, dtype=np.float64)
    use = np.ones(maps.shape, bool) if mask is None else np.broadcast_to(mask, maps.shape) > 0
    n_bins = edges.size - 1
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    use = use.reshape(flat.shape)
    density = np.zeros((flat.shape[0], n_bins))
    for i, (row, u) in enumerate(zip(flat, use, strict=True)):
        n = int(u.sum())
        if n:
            density[i] = np.histogram(row[u], bins=edges)[0] / (n * np.diff(edges))
    return 0.5 * (edges[1:] + edges[:-1]), density.reshape(*maps.shape[:-2], n_bins)


def find_peaks(maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``[..., ny, nx]``: pixels strictly higher than all 8 neighbours.

    Border pixels (without 8 neighbours) are never peaks; with a ``mask``, pixels whose
    3×3 neighbourhood touches a masked pixel (mask == 0) are excluded too.
    """
    maps = np.asarray(maps, dtype=np.float64)
    ny, nx = maps.shape[-2:]
    peaks = np.zeros(maps.shape, bool)
    if ny < 3 or nx < 3:
        return peaks
    centre = maps[..., 1:-1, 1:-1]
    inner = np.ones(centre.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                inner &= centre > maps[..., 1 + dy : ny - 1 + dy, 1 + dx : nx - 1 + dx]
    if mask is not None:
        ok = np.broadcast_to(np.asarray(mask) > 0, maps.shape)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inner &= ok[..., 1 + dy : ny - 1 + dy, 1 + dx : nx - 1 + dx]
    peaks[..., 1:-1, 1:-1] = inner
    return peaks


def peak_counts(
    maps: np.ndarray,
    edges: Sequence[float],
    noise_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of peak heights, in κ or in signal-to-noise ν = κ/σ_noise.

    Parameters
    ----------
    maps
        ``[..., ny, nx]``.
    edges
        Bin edges of the peak height ``[n_bins + 1]`` (κ, or ν when ``noise_sigma`` is given).
    noise_sigma
        Noise standard deviation: a scalar or an array broadcasting against ``maps``
        (per map ``[..., 1, 1]`` or per pixel); must be > 0.
    mask
        Optional; peaks touching masked pixels are not counted (:func:`find_peaks`).

    Returns
    -------
    (centres, counts)
        ``centres [n_bins]`` and integer ``counts [..., n_bins]``.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be at least two strictly increasing values")
    maps = np.asarray(maps, dtype=np.float64)
    height = maps
    if noise_sigma is not None:
        sig = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), maps.shape)
        if np.any(~(sig > 0)):
            raise ValueError(f"noise_sigma: {int(np.sum(~(sig > 0)))} values are not > 0")
        height = maps / sig
    # peaks of the S/N map when the noise varies from pixel to pixel
    peaks = find_peaks(height, mask)
    n_bins = edges.size - 1
    flat_h = height.reshape(-1, maps.shape[-2] * maps.shape[-1])
    flat_p = peaks.reshape(flat_h.shape)
    counts = np.stack(
        [np.histogram(h[p], bins=edges)[0] for h, p in zip(flat_h, flat_p, strict=True)]
    )
    return 0.5 * (edges[1:] + edges[:-1]), counts.reshape(*maps.shape[:-2], n_bins)


def truth_peaks(truth: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``n`` highest peaks of the true κ in each bin: ``[(row, col, κ)]`` per bin."""
    out = []
    peaks = find_peaks(truth)
    for b in range(truth.shape[0]):
        rows, cols = np.nonzero(peaks[b])
        heights = truth[b, rows, cols]
        order = np.argsort(heights)[::-1][:n]
        out.append((rows[order].astype(float), cols[order].astype(float), heights[order]))
    return out


def one_point(
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
        out["pdf"][b] = pdf(maps[..., b, :, :], pdf_edges[b], mb)[1].mean(axis=lead)
        counts = peak_counts(maps[..., b, :, :], peak_edges[b], mask=mb)[1]
        out["peaks"][b] = counts.mean(axis=lead)
    return out


def kappa_edges(truth: np.ndarray, n: int, lo_sigma: float, hi_sigma: float) -> np.ndarray:
    """Per-bin κ edges ``[bin, n + 1]`` from ``lo_sigma`` to ``hi_sigma`` truth std about 0."""
    sigma = truth.std(axis=(0, 2, 3))
    return np.stack([np.linspace(lo_sigma * s, hi_sigma * s, n + 1) for s in sigma])
