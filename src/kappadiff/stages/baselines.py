"""Stages `signal_power`, `baseline_ks`, `baseline_wiener` and `baseline_wiener_tomo`.

The classical mass maps, the baselines of Boruah et al. (2025) and DES Collaboration
(2021): Kaiser-Squires (E and null B mode, optional Gaussian smoothing) and a Wiener
filter per tomographic bin whose signal power spectrum is measured from the training
cut-outs (or supplied as a file of the same format). A third map, the tomographic Wiener
filter, solves all bins at once with their cross-spectra: the posterior mean of a
Gaussian field, the bar a non-Gaussian prior has to clear. Each patch product copies
the TAN WCS of its data patch.

Signal power files are FITS tables (``products.write_table``) with columns ``ELL``
(radians⁻¹, increasing), ``CL_BIN1``..``CL_BINn`` (flat-sky C_ℓ of κ, steradians) and,
for the tomographic filter, the cross-spectra ``CL_BIN<i>_<j>`` (i < j).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from .. import lensing, stats
from ..catalogue.io import read_data_patch
from ..products import (
    ProductError,
    image_hdu,
    load_npy,
    open_fits,
    patch_identity,
    provenance,
    read_table,
    write_fits,
    write_table,
)

__all__ = [
    "MEASURED",
    "cutout_spectra",
    "read_cutouts",
    "kaiser_squires_patch_file",
    "measure_signal_power",
    "cross_column",
    "read_signal_covariance",
    "read_signal_power",
    "signal_power_path",
    "wiener_patch_file",
]

log = logging.getLogger(__name__)

#: ``lensing.wiener_signal_power`` value that measures the spectrum from the cut-outs.
MEASURED = "measured"

#: Cut-outs transformed at once while measuring the signal power (bounds the memory).
CUTOUT_CHUNK = 32


def signal_power_path(config: Mapping[str, Any]) -> str:
    """The signal power file the Wiener filter reads: measured product or supplied file."""
    source = config["lensing"]["wiener_signal_power"]
    if source == MEASURED:
        return f"{config['results']}/baselines/signal_power.fits"
    return source


def _pixel_scale(config: Mapping[str, Any]) -> float:
    return float(config["layout"]["pixel_scale_arcmin"])


def _finite_block(path: str | os.PathLike, cut: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Cut-outs ``cut[index]`` as float64; :class:`ProductError` naming ``path`` if any is
    not finite."""
    block = np.asarray(cut[index], dtype=np.float64)
    bad = ~np.isfinite(block)
    if bad.any():
        raise ProductError(f"{path}: {int(bad.sum())} non-finite κ values in the cut-outs")
    return block


def cutout_spectra(
    cutout_files: Sequence[str | os.PathLike],
    npix: int,
    pixel_scale_arcmin: float,
    ell_edges: np.ndarray,
    per_file: int,
    cross: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Binned flat-sky C_ℓ of each of the training cut-outs used.

    Parameters
    ----------
    cutout_files
        ``.npy`` files of float32 ``[patch, bin, row, col]`` κ cut-outs (memory-mapped, read
        ``CUTOUT_CHUNK`` at a time).
    npix, pixel_scale_arcmin
        The patch grid the cut-outs must have.
    ell_edges
        ℓ-bin edges ``[n_ell + 1]``.
    per_file
        Cut-outs used per file, evenly spaced through it.
    cross
        Also the cross-spectra between bins.

    Returns
    -------
    ell, cl
        ``ell [n_ell]`` and ``cl [n_cutout, bin, n_ell]``, or ``[n_cutout, bin, bin, n_ell]``
        with ``cross``.

    Raises
    ------
    ProductError
        Naming the file, on a wrong shape, a bin count that differs between files, or
        non-finite κ.
    """
    if not cutout_files:
        raise ValueError("cutout_spectra: no cut-out files")
    spectra, n_bins, ell = [], None, None
    for path in cutout_files:
        cut = load_npy(path, mmap_mode="r")
        if cut.ndim != 4 or cut.shape[-2:] != (npix, npix):
            raise ProductError(
                f"{path}: cut-outs of shape {cut.shape}, expected [patch, bin, {npix}, {npix}]"
            )
        if n_bins is None:
            n_bins = cut.shape[1]
        elif cut.shape[1] != n_bins:
            raise ProductError(f"{path}: {cut.shape[1]} bins, but {cutout_files[0]} has {n_bins}")
        chosen = np.unique(np.linspace(0, cut.shape[0] - 1, min(per_file, cut.shape[0])).round())
        chosen = chosen.astype(int)
        for start in range(0, chosen.size, CUTOUT_CHUNK):
            block = _finite_block(path, cut, chosen[start : start + CUTOUT_CHUNK])
            if cross:
                # bin pairs one at a time: memory of two bins of the chunk, not of n_bins²
                cl = np.empty((block.shape[0], n_bins, n_bins, ell_edges.size - 1))
                for i in range(n_bins):
                    for j in range(i, n_bins):
                        ell, cij = stats.cross_spectrum_flat(
                            block[:, i], block[:, j], pixel_scale_arcmin, ell_edges
                        )
                        cl[:, i, j] = cl[:, j, i] = cij
            else:
                ell, cl = stats.power_spectrum_flat(block, pixel_scale_arcmin, ell_edges)
            spectra.append(cl)
        log.info("%s: %d of %d cut-outs used", path, chosen.size, cut.shape[0])
    return ell, np.concatenate(spectra)


def read_cutouts(cutout_files: Sequence[str | os.PathLike], n: int) -> np.ndarray:
    """``n`` training cut-outs ``[n, bin, row, col]`` (float64), evenly spaced through the files.

    Raises :class:`ProductError` naming the file on a shape that differs from the first
    file's or on non-finite κ, and ``ValueError`` when the files hold fewer than ``n``.
    """
    if not cutout_files:
        raise ValueError("read_cutouts: no cut-out files")
    arrays = [load_npy(path, mmap_mode="r") for path in cutout_files]
    for path, a in zip(cutout_files, arrays, strict=True):
        if a.ndim != 4 or a.shape[1:] != arrays[0].shape[1:]:
            raise ProductError(
                f"{path}: cut-outs of shape {a.shape}, but {cutout_files[0]} has "
                f"[patch, {', '.join(map(str, arrays[0].shape[1:]))}]"
            )
    sizes = np.array([a.shape[0] for a in arrays])
    if sizes.sum() < n:
        raise ValueError(f"{n} cut-outs wanted, {int(sizes.sum())} in {len(cutout_files)} files")
    wanted = np.unique(np.linspace(0, sizes.sum() - 1, n).round().astype(int))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for path, a, start, size in zip(cutout_files, arrays, starts, sizes, strict=True):
        local = wanted[(wanted >= start) & (wanted < start + size)] - start
        if local.size:
            out.append(_finite_block(path, a, local))
    return np.concatenate(out)


def measure_signal_power(
    cutout_files: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    config: Mapping[str, Any],
) -> None:
    """Mean flat-sky C_ℓ per bin of the training cut-outs, written as a signal power table.

    Parameters
    ----------
    cutout_files
        ``.npy`` files of float32 ``[patch, bin, row, col]`` κ cut-outs (memory-mapped).
    out_path
        Output FITS table (module docstring), ℓ bins one fundamental mode wide up to
        the Nyquist ℓ (:func:`kappadiff.stats.ell_bins_linear`).
    config
        Uses ``layout.npix``, ``layout.pixel_scale_arcmin`` and
        ``lensing.wiener_power_cutouts`` (cut-outs per file, evenly spaced).
    """
    npix = int(config["layout"]["npix"])
    scale = _pixel_scale(config)
    edges = stats.ell_bins_linear(npix, npix, scale)
    per_file = int(config["lensing"]["wiener_power_cutouts"])
    ell, cl = cutout_spectra(cutout_files, npix, scale, edges, per_file, cross=True)
    n_used, n_bins = cl.shape[:2]
    cl_mean = cl.mean(axis=0)
    auto = cl_mean[np.arange(n_bins), np.arange(n_bins)]
    bad = ~(auto > 0)
    if bad.any():
        raise ValueError(
            f"signal power: {int(bad.sum())} (bin, ell) values of the mean spectrum are <= 0 "
            f"({n_used} cut-outs)"
        )
    columns = {"ELL": ell}
    columns.update({f"CL_BIN{b + 1}": auto[b] for b in range(n_bins)})
    columns.update(
        {cross_column(i, j): cl_mean[i, j] for i in range(n_bins) for j in range(i + 1, n_bins)}
    )
    cards = provenance(config, NCUTOUT=n_used, NPIX=npix, PIXSCALE=scale)
    write_table(out_path, columns, header=cards, name="POWER")
    log.info("signal power from %d cut-outs, %d ell bins -> %s", n_used, ell.size, out_path)


def cross_column(i: int, j: int) -> str:
    """Column of the cross-spectrum of bins ``i`` and ``j`` (0-based, ``i < j``): ``CL_BIN1_2``."""
    return f"CL_BIN{i + 1}_{j + 1}"


def read_signal_covariance(path: str | os.PathLike, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Read auto and cross spectra: ``(ell [n_ell], cl [n_bins, n_bins, n_ell])``.

    Raises :class:`ProductError` naming the file and the missing cross-spectrum columns
    (``CL_BIN<i>_<j>``, i < j), which a measured signal power file always has.
    """
    columns = _power_columns(path)
    ell, auto = _auto_spectra(path, columns, n_bins)
    pairs = [(i, j) for i in range(n_bins) for j in range(i + 1, n_bins)]
    missing = [cross_column(i, j) for i, j in pairs if cross_column(i, j) not in columns]
    if missing:
        raise ProductError(
            f"{path}: the tomographic Wiener filter needs the cross-spectra, but the table "
            f"lacks columns {missing} (a signal power file measured from the cut-outs by "
            "this version has them)"
        )
    cl = np.zeros((n_bins, n_bins, ell.size))
    cl[np.arange(n_bins), np.arange(n_bins)] = auto
    for i, j in pairs:
        column = np.asarray(columns[cross_column(i, j)], dtype=np.float64)
        if not np.all(np.isfinite(column)):
            raise ProductError(f"{path}: column {cross_column(i, j)} holds non-finite values")
        cl[i, j] = cl[j, i] = column
    return ell, cl


def _power_columns(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a signal power file's first table, by upper-case name."""
    with open_fits(path) as hdul:
        tables = [h.name for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
    if not tables:
        raise ProductError(f"{path}: no table HDU holding the signal power")
    data, _ = read_table(path, name=tables[0])
    return {k.upper(): v for k, v in data.items()}


def _auto_spectra(
    path: str | os.PathLike, columns: Mapping[str, np.ndarray], n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    wanted = ["ELL", *(f"CL_BIN{b + 1}" for b in range(n_bins))]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ProductError(f"{path}: signal power table lacks columns {missing}")
    ell = np.asarray(columns["ELL"], dtype=np.float64)
    cl = np.stack([np.asarray(columns[c], dtype=np.float64) for c in wanted[1:]])
    if np.any(~(ell > 0)) or np.any(np.diff(ell) <= 0):
        raise ProductError(f"{path}: column ELL must be positive and strictly increasing")
    bad = ~(cl > 0)
    if bad.any():
        raise ProductError(f"{path}: {int(bad.sum())} CL_BIN values are <= 0 or NaN")
    return ell, cl


def read_signal_power(path: str | os.PathLike, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a signal power table: ``(ell [n_ell], cl [n_bins, n_ell])``.

    Raises :class:`ProductError` naming the file and the missing or bad column.
    """
    return _auto_spectra(path, _power_columns(path), n_bins)


def _read_observed_patch(
    data_path: str | os.PathLike, pixel_scale_arcmin: float
) -> tuple[dict[str, np.ndarray], fits.Header]:
    """:func:`read_data_patch`, refusing a patch with no observed pixel in any bin.

    Its baselines would be κ ≡ 0, written as if they were maps (``pixelise`` refuses to
    make such a patch, so this is some other file).
    """
    images, wcs = read_data_patch(data_path, pixel_scale_arcmin)
    if not images["MASK"].any():
        raise ProductError(
            f"{data_path}: no observed pixel in any bin (HDU MASK is 0 everywhere); its "
            "Kaiser-Squires and Wiener maps would be kappa = 0"
        )
    return images, wcs


def kaiser_squires_patch_file(
    data_path: str | os.PathLike, out_path: str | os.PathLike, config: Mapping[str, Any]
) -> None:
    """Kaiser-Squires map of one data patch: HDUs KAPPA (E mode) and KAPPA_B (null test).

    Masked pixels are zero-filled; ``lensing.pad`` zero pixels surround the patch and
    ``lensing.ks_smoothing_arcmin`` sets the Gaussian smoothing σ (0: none).
    """
    lcfg = config["lensing"]
    scale = _pixel_scale(config)
    images, wcs = _read_observed_patch(data_path, scale)
    k_e, k_b = lensing.kaiser_squires_patch(
        images["G1"],
        images["G2"],
        images["MASK"],
        scale,
        pad=lcfg["pad"],
        smoothing_arcmin=lcfg["ks_smoothing_arcmin"],
    )
    cards = provenance(
        config,
        METHOD="KS",
        PAD=int(lcfg["pad"]),
        SMOOTH=float(lcfg["ks_smoothing_arcmin"]),
        **patch_identity(data_path),
    )
    write_fits(
        out_path,
        [image_hdu("KAPPA", k_e, wcs), image_hdu("KAPPA_B", k_b, wcs)],
        primary_header=cards,
    )
    rms_e, rms_b = np.std(k_e, axis=(1, 2)), np.std(k_b, axis=(1, 2))
    log.info("KS: rms kappa_E per bin %s, kappa_B %s", rms_e, rms_b)


def wiener_patch_file(
    data_path: str | os.PathLike,
    power_path: str | os.PathLike,
    out_path: str | os.PathLike,
    config: Mapping[str, Any],
    tomographic: bool = False,
) -> None:
    """Wiener filter of one data patch (HDU KAPPA), by preconditioned CG.

    Per bin by default; with ``tomographic`` all bins at once with their cross-spectra
    (:func:`kappadiff.lensing.wiener_filter_tomographic`, which needs the ``CL_BIN<i>_<j>``
    columns of a measured signal power file). Uses ``lensing.pad``,
    ``lensing.wiener_tol`` and ``lensing.wiener_max_iter``; the iterations and final
    relative residual go to the header (``WFITER<b>``/``WFRES<b>`` per bin, or
    ``WFITER``/``WFRES`` for the joint system). Not reaching the tolerance is an error.
    """
    lcfg = config["lensing"]
    scale = _pixel_scale(config)
    images, wcs = _read_observed_patch(data_path, scale)
    n_bins = images["G1"].shape[0]
    if tomographic:
        ell, cl = read_signal_covariance(power_path, n_bins)
        solve = lensing.wiener_filter_tomographic
    else:
        ell, cl = read_signal_power(power_path, n_bins)
        solve = lensing.wiener_filter
    res = solve(
        images["G1"],
        images["G2"],
        images["SIGMA"],
        images["MASK"],
        ell,
        cl,
        scale,
        pad=lcfg["pad"],
        tol=lcfg["wiener_tol"],
        max_iter=lcfg["wiener_max_iter"],
    )
    iterations = np.atleast_1d(res.iterations)
    residual = np.atleast_1d(res.residual)
    names = [""] if tomographic else [str(b + 1) for b in range(n_bins)]
    for name, it, rr in zip(names, iterations, residual, strict=True):
        log.info("%s: %d CG steps, residual %.3g", f"bin {name}" if name else "joint", it, rr)
    if not np.all(res.converged):
        failed = [n for n, ok in zip(names, np.atleast_1d(res.converged), strict=True) if not ok]
        which = "" if tomographic else f" for bins {[int(n) for n in failed]}"
        raise RuntimeError(
            f"{data_path}: Wiener filter did not reach lensing.wiener_tol = {lcfg['wiener_tol']} "
            f"in {lcfg['wiener_max_iter']} iterations{which} (residuals {res.residual})"
        )
    cards = provenance(
        config,
        METHOD="WIENER_TOMO" if tomographic else "WIENER",
        PAD=int(lcfg["pad"]),
        WFTOL=float(lcfg["wiener_tol"]),
        **patch_identity(data_path),
    )
    for name, it, rr in zip(names, iterations, residual, strict=True):
        cards[f"WFITER{name}"] = int(it)
        cards[f"WFRES{name}"] = float(rr)
    write_fits(out_path, [image_hdu("KAPPA", res.kappa, wcs)], primary_header=cards)
