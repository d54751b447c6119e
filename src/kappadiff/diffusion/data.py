"""Training data for the prior: memory-mapped κ cut-outs, their normalisation, augmentation.

Cut-out files are float32 ``.npy`` arrays ``[patch, bin, row, col]`` (written by the
``extract_patches`` rule) opened with ``np.load(mmap_mode='r')``, so the training set is
never held in memory whole. Which cut-outs make each batch, and how each is flipped or
rotated, is a pure function of ``(seed, step)``: a rerun after a kill, or a run split over
several processes, sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..products import ProductError, load_npy
from ..seeding import derive_seed, rng_for

__all__ = [
    "CutoutSet",
    "Normalisation",
    "augment_dihedral",
    "content_hash",
    "fit_normalisation",
    "open_cutouts",
    "split_holdout",
]

log = logging.getLogger(__name__)

#: Cut-outs read at once while scanning the files for statistics (bounds memory).
SCAN_CHUNK = 256
#: Whole cut-outs a file contributes to :func:`content_hash`.
HASH_CUTOUTS = 32


@dataclass(frozen=True)
class Normalisation:
    """Per-bin map between κ and the network's variable ``x``.

    ``kind="affine"``: ``x = (κ − mean_b) / std_b``.
    ``kind="shifted_log"``: ``x = (log(κ + shift_b) − mean_b) / std_b`` (κ of lensing is
    close to a shifted lognormal field; Hilbert et al. 2011), with mean/std those of the log.

    Attributes
    ----------
    kind
        ``"affine"`` or ``"shifted_log"``.
    mean, std, shift
        float32 ``[bins]`` tensors (``shift`` is zero for affine).
    """

    kind: str
    mean: torch.Tensor
    std: torch.Tensor
    shift: torch.Tensor

    def _view(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # bins are axis -3 of [..., bin, row, col]
        return v.to(like.device, like.dtype)[:, None, None]

    def from_kappa(self, kappa: torch.Tensor) -> torch.Tensor:
        """κ ``[..., bin, n, n]`` → network variable ``x`` (differentiable)."""
        if self.kind == "shifted_log":
            kappa = torch.log(kappa + self._view(self.shift, kappa))
        return (kappa - self._view(self.mean, kappa)) / self._view(self.std, kappa)

    def to_kappa(self, x: torch.Tensor) -> torch.Tensor:
        """Network variable ``x`` ``[..., bin, n, n]`` → κ (differentiable)."""
        y = x * self._view(self.std, x) + self._view(self.mean, x)
        if self.kind == "shifted_log":
            y = torch.exp(y) - self._view(self.shift, x)
        return y

    def to_dict(self) -> dict:
        """Tensors and plain values for a ``weights_only`` checkpoint."""
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "shift": self.shift}

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(
            str(d["kind"]),
            d["mean"].float().cpu(),
            d["std"].float().cpu(),
            d["shift"].float().cpu(),
        )


def open_cutouts(paths: Sequence[str | os.PathLike], npix: int | None = None) -> list[np.ndarray]:
    """Memory-map cut-out files, checking shape and dtype.

    Parameters
    ----------
    paths
        ``.npy`` files, each float32 ``[patch, bin, row, col]``.
    npix
        Expected side in pixels (``layout.npix``), or None to accept any square side.

    Raises
    ------
    ProductError
        Naming the file when it is cut short or unreadable, or its dimensionality, dtype,
        bin count or side disagrees.
    """
    arrays = []
    for path in paths:
        a = load_npy(path, mmap_mode="r")
        if a.ndim != 4 or a.shape[2] != a.shape[3]:
            raise ProductError(
                f"{path}: cut-outs must be [patch, bin, n, n], found shape {a.shape}"
            )
        if a.dtype != np.float32:
            raise ProductError(f"{path}: cut-outs must be float32, found {a.dtype}")
        if npix is not None and a.shape[2] != npix:
            raise ProductError(f"{path}: cut-outs are {a.shape[2]} px a side, layout.npix = {npix}")
        if arrays and a.shape[1:] != arrays[0].shape[1:]:
            raise ProductError(
                f"{path}: shape {a.shape[1:]} per cut-out differs from {paths[0]}: "
                f"{arrays[0].shape[1:]}"
            )
        if a.shape[0] == 0:
            raise ProductError(f"{path}: holds no cut-outs")
        arrays.append(a)
    return arrays


def content_hash(arrays: Sequence[np.ndarray], per_file: int = HASH_CUTOUTS) -> str:
    """A cheap hash of the cut-outs' content: a strided sample of every file, not all of it.

    Per file: dtype and shape, the middle row of every bin of every cut-out (one memory
    page each, so every cut-out is seen), and ``per_file`` whole cut-outs evenly spaced
    through the file. A rebuilt training set (other cosmology, seed, sky) changes every
    cut-out and so the hash; a rewrite of identical content does not. Reads about
    ``1/npix + per_file/n_cutouts`` of the data.

    Returns the first 16 hex digits of the SHA-256.
    """
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str} {list(a.shape)}".encode())
        h.update(np.ascontiguousarray(a[:, :, a.shape[2] // 2, :]).tobytes())
        picks = np.unique(np.linspace(0, a.shape[0] - 1, min(per_file, a.shape[0])).round())
        for i in picks.astype(int):
            h.update(np.ascontiguousarray(a[i]).tobytes())
    return h.hexdigest()[:16]


def fit_normalisation(
    arrays: Sequence[np.ndarray],
    kind: str = "affine",
    log_shift_factor: float = 1.5,
    names: Sequence[str] | None = None,
) -> Normalisation:
    """Per-bin normalisation from training-set statistics, scanning the files in chunks.

    Parameters
    ----------
    arrays
        Memory-mapped cut-outs ``[patch, bin, n, n]`` (see :func:`open_cutouts`).
    kind
        ``"affine"`` or ``"shifted_log"``.
    log_shift_factor
        For ``shifted_log``: ``shift_b = log_shift_factor × (−min κ_b)``, > 1 so that
        κ + shift stays positive with margin for values below the training minimum.
    names
        File names for error messages.

    Raises
    ------
    ValueError
        If a file holds non-finite values (naming file and count), or, for ``shifted_log``,
        a bin has no negative values to set the shift from.
    """
    if kind not in ("affine", "shifted_log"):
        raise ValueError(f"unknown normalisation {kind!r} (expected 'affine' or 'shifted_log')")
    names = list(names) if names is not None else [f"array {i}" for i in range(len(arrays))]
    n_bins = arrays[0].shape[1]
    kmin = np.full(n_bins, np.inf)
    for a, name in zip(arrays, names, strict=True):
        for lo in range(0, a.shape[0], SCAN_CHUNK):
            chunk = np.asarray(a[lo : lo + SCAN_CHUNK])
            bad = int(np.count_nonzero(~np.isfinite(chunk)))
            if bad:
                raise ValueError(f"{name}: {bad} non-finite κ values among cut-outs {lo}+")
            kmin = np.minimum(kmin, chunk.min(axis=(0, 2, 3)))
    shift = np.zeros(n_bins)
    if kind == "shifted_log":
        if np.any(kmin >= 0):
            raise ValueError(
                f"shifted_log normalisation needs negative κ in every bin; minima {kmin}"
            )
        shift = -log_shift_factor * kmin

    # two-pass-free mean/variance with float64 accumulators (exact enough for ~1e9 pixels)
    s1 = np.zeros(n_bins)
    s2 = np.zeros(n_bins)
    count = 0
    for a in arrays:
        for lo in range(0, a.shape[0], SCAN_CHUNK):
            chunk = np.asarray(a[lo : lo + SCAN_CHUNK], dtype=np.float64)
            if kind == "shifted_log":
                chunk = np.log(chunk + shift[None, :, None, None])
            s1 += chunk.sum(axis=(0, 2, 3))
            s2 += (chunk**2).sum(axis=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    if np.any(std <= 0):
        raise ValueError(f"constant κ in bins {np.flatnonzero(std <= 0).tolist()} of {names}")
    log.info("normalisation %s: mean %s std %s shift %s", kind, mean, std, shift)
    as_t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return Normalisation(kind, as_t(mean), as_t(std), as_t(shift))


def augment_dihedral(batch: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to each cut-out.

    κ is statistically isotropic and parity-invariant, so flips and 90° rotations
    are exact augmentations (shear would need its spin-2 transformation; κ does not).

    Parameters
    ----------
    batch
        ``[B, bin, n, n]``.
    ops
        ``[B]`` integers in 0..7: rotate by ``ops % 4`` quarter turns, then transpose if
        ``ops >= 4``.
    """
    out = np.empty_like(batch)
    for i, op in enumerate(ops):
        x = np.rot90(batch[i], k=int(op) % 4, axes=(-2, -1))
        out[i] = np.swapaxes(x, -1, -2) if op >= 4 else x
    return out


class CutoutSet:
    """The training cut-outs across files, with a deterministic batch order.

    Parameters
    ----------
    arrays
        Memory-mapped cut-out arrays (:func:`open_cutouts`).
    indices
        Global indices (into the concatenation of ``arrays``) that belong to this set, e.g.
        the training split; None for all.
    seed
        Seed of the data order and augmentation streams.
    augment
        Apply random dihedral symmetries.

    Notes
    -----
    Sample ``g = step × batch + k`` of the run is element ``g mod N`` of the permutation
    of epoch ``g // N``, the permutation drawn from ``rng_for(seed, "prior-order", epoch)``.
    So the data order is reproduced by the step counter alone (exact resume), and a
    distributed run hands each process a slice of the same global batch.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        indices: np.ndarray | None = None,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [a.shape[0] for a in self.arrays])
        total = int(self.offsets[-1])
        self.indices = np.arange(total) if indices is None else np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError("the training set is empty")
        self.seed = int(seed)
        self.augment = augment
        self._perm_epoch = -1
        self._perm = self.indices

    def __len__(self) -> int:
        return len(self.indices)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = rng_for(self.seed, "prior-order", epoch).permutation(self.indices)
            self._perm_epoch = epoch
        return self._perm

    def read(self, global_indices: np.ndarray) -> np.ndarray:
        """Cut-outs ``[len, bin, n, n]`` float32 at the given global indices."""
        file_of = np.searchsorted(self.offsets, global_indices, side="right") - 1
        return np.stack(
            [
                np.asarray(self.arrays[f][g - self.offsets[f]])
                for f, g in zip(file_of, global_indices, strict=True)
            ]
        ).astype(np.float32, copy=False)

    def batch_indices(self, step: int, batch_size: int) -> np.ndarray:
        """Global cut-out indices of the global batch at ``step``."""
        g = step * batch_size + np.arange(batch_size)
        n = len(self.indices)
        return np.array([self._permutation(int(e))[p] for e, p in zip(g // n, g % n, strict=True)])

    def batch(self, step: int, batch_size: int, part: slice = slice(None)) -> np.ndarray:
        """The (augmented) global batch at ``step``, or the ``part`` of it one process trains on.

        Returns float32 ``[len(part), bin, n, n]`` κ (not yet normalised).
        """
        idx = self.batch_indices(step, batch_size)[part]
        x = self.read(idx)
        if self.augment:
            ops = np.random.default_rng(derive_seed(self.seed, "prior-augment", step)).integers(
                0, 8, size=batch_size
            )[part]
            x = augment_dihedral(x, ops)
        return x


def split_holdout(n_total: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split cut-out indices ``0..n_total-1`` into ``(train, holdout)``, both sorted.

    The held-out cut-outs (at least one when ``fraction > 0``) are never trained on; they
    are the reference for validating prior samples.
    """
    n_hold = int(round(fraction * n_total))
    if fraction > 0:
        n_hold = max(n_hold, 1)
    if n_hold >= n_total:
        raise ValueError(
            f"holdout_fraction = {fraction} leaves no training cut-outs out of {n_total}"
        )
    perm = rng_for(seed, "prior-holdout").permutation(n_total)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])
