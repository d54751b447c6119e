"""TARP coverage of posterior samples, and the likelihood-scaling choice it drives.

TARP (Tests of Accuracy with Random Points, Lemos, Coogan et al. 2023, arXiv:2302.03026)
checks that posterior samples are calibrated in many dimensions at once. For each
simulation ``i`` with truth ``θ_i`` and samples ``θ_i^(s)``, draw a reference point
``r_i`` and compute the credibility of the truth,

    f_i = (1/S) Σ_s 1[ d(θ_i^(s), r_i) < d(θ_i, r_i) ],                  (TARP eq. 4)

the fraction of samples closer to the reference than the truth. The expected coverage
probability at credibility ``α`` is ``ECP(α) = mean_i 1[f_i < α]``; for a calibrated
posterior ``f`` is uniform on [0, 1] and ``ECP(α) = α`` for every reference
distribution (TARP theorem 3). An over-confident posterior (too narrow, or biased) leaves the
truth outside its sample cloud, so the truth is more often nearer to or farther from the
reference than every sample: ``f`` piles up at 0 and 1 and ``ECP`` leaves the diagonal;
an under-confident posterior puts ``ECP`` above it.

With few samples per simulation (8–16 at the default config) ``f`` only takes the values
``k/S``, and the plain estimator is off the diagonal by up to ``1/(S + 1)`` even for a
perfect posterior. :func:`tarp_credibility` therefore has a randomised form, the
randomised probability integral transform of the rank of the truth among the ``S + 1``
distances, ``f = (k + U)/(S + 1)``, which is exactly uniform for a calibrated posterior;
the pipeline uses it, and the plain form reproduces the ``tarp`` package
(:func:`tarp_package_coverage`, cross-checked in the tests).

The likelihood-scaling search (Boruah et al. 2025, Sect. 3) picks, from DPS runs on mock
patches with known truth for a set of ``A(t) = sigmoid((t̄ − t)/σ_t)`` parameters, the
pair (jointly or per tomographic bin) with the smallest maximum ``|ECP − α|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .scaling import LikelihoodScaling

__all__ = [
    "ScalingChoice",
    "TarpResult",
    "bootstrap_coverage",
    "choose_scaling",
    "coverage_curve",
    "max_coverage_error",
    "prior_references",
    "random_references",
    "tarp_coverage",
    "tarp_credibility",
    "tarp_inputs",
    "tarp_package_coverage",
    "tarp_vectors",
]


def _check_shapes(samples: np.ndarray, theta: np.ndarray, references: np.ndarray) -> None:
    if samples.ndim != 3:
        raise ValueError(f"samples must be [n_samples, n_sims, n_dims], got shape {samples.shape}")
    if theta.shape != samples.shape[1:]:
        raise ValueError(
            f"theta has shape {theta.shape}, expected [n_sims, n_dims] = {samples.shape[1:]}"
        )
    if references.shape != theta.shape:
        raise ValueError(
            f"references have shape {references.shape}, expected one per simulation {theta.shape}"
        )
    for name, arr in (("samples", samples), ("theta", theta), ("references", references)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite values")


def _distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "euclidean":
        return np.sqrt(np.sum((a - b) ** 2, axis=-1))
    if metric == "manhattan":
        return np.sum(np.abs(a - b), axis=-1)
    raise ValueError(f"metric must be 'euclidean' or 'manhattan', got {metric!r}")


def tarp_credibility(
    samples: np.ndarray,
    theta: np.ndarray,
    references: np.ndarray,
    metric: str = "euclidean",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Credibility level of the truth in each simulation's TARP ball.

    Parameters
    ----------
    samples
        Posterior samples, shape ``[n_samples, n_sims, n_dims]``.
    theta
        True parameters, shape ``[n_sims, n_dims]``.
    references
        One reference point per simulation, shape ``[n_sims, n_dims]``.
    metric
        ``"euclidean"`` or ``"manhattan"`` distance.
    rng
        If given, the randomised form ``f = (k + U)/(S + 1)``: ``k`` is the number of samples
        strictly closer to the reference than the truth plus a uniform share of the ties,
        ``U ~ U(0, 1)``. If None, the plain form ``f = k/S`` of TARP eq. (4) (the ``tarp``
        package's definition).

    Returns
    -------
    numpy.ndarray
        ``f``, shape ``[n_sims]``, in [0, 1].

    Notes
    -----
    Under a calibrated posterior the truth and the ``S`` samples are exchangeable, so the
    rank ``k`` of the truth's distance among the ``S + 1`` distances is uniform on
    ``{0, …, S}``, and ``(k + U)/(S + 1)`` is exactly uniform on [0, 1].
    """
    samples = np.asarray(samples, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    _check_shapes(samples, theta, references)
    d_samples = _distance(samples, references[None], metric)  # [n_samples, n_sims]
    d_theta = _distance(theta, references, metric)  # [n_sims]
    closer = np.sum(d_samples < d_theta, axis=0)
    n_samples = samples.shape[0]
    if rng is None:
        return closer / n_samples
    ties = np.sum(d_samples == d_theta, axis=0)
    rank = closer + rng.integers(0, ties + 1)
    return (rank + rng.uniform(size=rank.shape)) / (n_samples + 1)


def coverage_curve(f: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Expected coverage probability ``ECP(α) = mean_i 1[f_i < α]``.

    Parameters
    ----------
    f
        Credibility of the truth per simulation, shape ``[n_sims]`` (or ``[..., n_sims]``).
    alpha
        Credibility levels, shape ``[n_alpha]``.

    Returns
    -------
    numpy.ndarray
        ECP, shape ``[..., n_alpha]``.
    """
    f = np.asarray(f)
    return np.mean(f[..., None, :] < np.asarray(alpha)[:, None], axis=-1)


def bootstrap_coverage(
    f: np.ndarray, alpha: np.ndarray, n_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
    """ECP curves of ``n_bootstrap`` resamplings of the simulations (with replacement).

    Returns shape ``[n_bootstrap, n_alpha]``. Simulations that are correlated (sub-regions
    of one patch) make the spread an underestimate of the true scatter.
    """
    f = np.asarray(f)
    idx = rng.integers(0, f.size, size=(n_bootstrap, f.size))
    return coverage_curve(f[idx], alpha)


def max_coverage_error(alpha: np.ndarray, ecp: np.ndarray) -> np.ndarray:
    """``max_α |ECP(α) − α|`` over the last axis: the calibration figure of merit."""
    return np.max(np.abs(np.asarray(ecp) - np.asarray(alpha)), axis=-1)


@dataclass(frozen=True)
class TarpResult:
    """A TARP coverage curve with its bootstrap band.

    Attributes
    ----------
    alpha, ecp : numpy.ndarray
        Credibility levels and expected coverage, shape ``[n_alpha]``.
    ecp_lo, ecp_hi : numpy.ndarray
        16th and 84th percentiles of the bootstrap ECP, shape ``[n_alpha]``.
    f : numpy.ndarray
        Credibility of the truth per simulation, shape ``[n_sims]``.
    max_error : float
        ``max |ECP − α|``.
    max_error_plain : float
        ``max |ECP − α|`` of the plain estimator ``f = k/S`` as the ``tarp`` package computes
        it on the same inputs (its α grid); larger by up to ``1/(S + 1)`` from the
        discreteness of ``f`` alone.
    """

    alpha: np.ndarray
    ecp: np.ndarray
    ecp_lo: np.ndarray
    ecp_hi: np.ndarray
    f: np.ndarray
    max_error: float
    max_error_plain: float


def tarp_coverage(
    samples: np.ndarray,
    theta: np.ndarray,
    references: np.ndarray,
    rng: np.random.Generator,
    n_alpha: int = 21,
    n_bootstrap: int = 200,
    metric: str = "euclidean",
) -> TarpResult:
    """TARP coverage of posterior samples, randomised credibility, bootstrap band.

    Parameters
    ----------
    samples, theta, references
        As for :func:`tarp_credibility`: ``[n_samples, n_sims, n_dims]``,
        ``[n_sims, n_dims]``, ``[n_sims, n_dims]``.
    rng
        Drives the randomised credibility and the bootstrap.
    n_alpha
        Number of credibility levels, evenly spaced on [0, 1].
    n_bootstrap
        Bootstrap resamplings of the simulations for the band.
    metric
        Distance, ``"euclidean"`` or ``"manhattan"``.

    Notes
    -----
    Every dimension is divided by the scatter of the truths across simulations before
    distances are taken, so that no tomographic bin (κ grows with source redshift)
    dominates the distance. Any fixed metric keeps the test valid (TARP theorem 3); this one
    makes it sensitive to all bins.
    """
    samples = np.asarray(samples, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    _check_shapes(samples, theta, references)
    scale = np.std(theta, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    samples, theta, references = samples / scale, theta / scale, references / scale
    f = tarp_credibility(samples, theta, references, metric, rng)
    alpha = np.linspace(0.0, 1.0, n_alpha)
    ecp = coverage_curve(f, alpha)
    boot = bootstrap_coverage(f, alpha, n_bootstrap, rng)
    lo, hi = np.percentile(boot, [16.0, 84.0], axis=0)
    ecp_pkg, alpha_pkg = tarp_package_coverage(
        samples, theta, references, n_alpha_bins=n_alpha - 1, metric=metric
    )
    return TarpResult(
        alpha,
        ecp,
        lo,
        hi,
        f,
        float(max_coverage_error(alpha, ecp)),
        float(max_coverage_error(alpha_pkg, ecp_pkg)),
    )


def tarp_package_coverage(
    samples: np.ndarray,
    theta: np.ndarray,
    references: np.ndarray,
    n_alpha_bins: int,
    bootstrap: bool = False,
    n_bootstrap: int = 100,
    seed: int | None = None,
    metric: str = "euclidean",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``tarp`` package's coverage (``tarp.get_tarp_coverage``) on copies of the inputs.

    ``tarp`` bins ``f = k/S`` in ``n_alpha_bins`` bins between its smallest and largest value
    and returns the cumulative histogram; with ``bootstrap=True`` it replaces simulations
    inside the arrays it is given, so they are copied here. It also reseeds numpy's global
    generator with ``seed``.

    Returns
    -------
    ecp, alpha : numpy.ndarray
        ``ecp`` of shape ``[n_alpha_bins + 1]`` (``[n_bootstrap, n_alpha_bins + 1]`` with
        bootstrap) at the bin edges ``alpha``.
    """
    import tarp  # the package imports `deprecation` at import time; keep it off module import

    samples = np.array(samples, dtype=np.float64, copy=True)
    theta = np.array(theta, dtype=np.float64, copy=True)
    references = np.array(references, dtype=np.float64, copy=True)
    _check_shapes(samples, theta, references)
    return tarp.get_tarp_coverage(
        samples,
        theta,
        references=references,
        metric=metric,
        num_alpha_bins=n_alpha_bins,
        num_bootstrap=n_bootstrap,
        norm=False,
        bootstrap=bootstrap,
        seed=seed,
    )


def random_references(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """References uniform in the bounding box of the truths, shape ``[n_sims, n_dims]``.

    The ``tarp`` package's ``"random"`` choice (uniform in the unit hypercube of the
    min/max-normalised truths), written in the truths' own units.
    """
    theta = np.asarray(theta, dtype=np.float64)
    low, high = theta.min(axis=0), theta.max(axis=0)
    return low + (high - low) * rng.uniform(size=theta.shape)


def prior_references(pool: np.ndarray, n_sims: int, rng: np.random.Generator) -> np.ndarray:
    """References drawn from prior samples, one per simulation, shape ``[n_sims, n_dims]``.

    Parameters
    ----------
    pool
        TARP vectors of unconditional prior samples, shape ``[n_pool, n_dims]`` (Boruah et
        al. draw TARP references from the diffusion prior).
    n_sims
        Number of simulations needing a reference.
    rng
        Chooses the pool members: without replacement when the pool is large enough,
        otherwise with replacement.
    """
    pool = np.asarray(pool, dtype=np.float64)
    if pool.ndim != 2 or len(pool) == 0:
        raise ValueError(f"prior reference pool must be [n_pool > 0, n_dims], got {pool.shape}")
    idx = rng.choice(len(pool), size=n_sims, replace=len(pool) < n_sims)
    return pool[idx]


def tarp_vectors(maps: np.ndarray, n_regions: int, block: int) -> np.ndarray:
    """Cut maps into sub-regions and block-average them into TARP vectors.

    Parameters
    ----------
    maps
        Flat maps, shape ``[..., n_bin, n, n]`` (leading axes: sample, patch, …).
    n_regions
        Sub-regions per side; ``n`` must be divisible by ``n_regions * block``.
    block
        Side, in pixels, of the blocks averaged into one TARP dimension.

    Returns
    -------
    numpy.ndarray
        Shape ``[..., n_regions**2, n_bin, (n / n_regions / block)**2]``: per sub-region
        (row-major), per bin, the block means.

    Notes
    -----
    A sub-region of a mock patch is used as one TARP simulation: the samples of its
    pixels are draws from the marginal posterior of that sub-region, which is what TARP
    tests, so ``ECP(α) = α`` holds for each sub-region and for their average. Sub-regions of
    one patch share data and are correlated, which widens the true scatter of ECP beyond
    the bootstrap band, but leaves its expectation unbiased. Block averaging keeps the
    dimension (4 bins × a few blocks) in the range where TARP's distances stay informative.
    """
    maps = np.asarray(maps)
    n = maps.shape[-1]
    if maps.shape[-2] != n:
        raise ValueError(f"maps must be square in the last two axes, got {maps.shape}")
    if n_regions < 1 or block < 1 or n % (n_regions * block):
        raise ValueError(
            f"patch side {n} px is not divisible by n_regions x block = {n_regions} x {block}"
        )
    side = n // n_regions
    nb = side // block
    lead = maps.shape[:-2]
    # [..., bin, ry, side, rx, side] -> [..., bin, ry, nb, block, rx, nb, block]
    x = maps.reshape(*lead, n_regions, nb, block, n_regions, nb, block)
    x = x.mean(axis=(-1, -4))  # [..., bin, ry, nb, rx, nb]
    nlead = len(lead) - 1
    # move region axes (ry, rx) before the bin axis
    axes = list(range(nlead)) + [nlead + 1, nlead + 3, nlead, nlead + 2, nlead + 4]
    x = x.transpose(axes)  # [..., ry, rx, bin, nb, nb]
    return x.reshape(*lead[:-1], n_regions * n_regions, lead[-1], nb * nb)


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
        See :func:`kappadiff.tarp_vectors`.

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
    x = tarp_vectors(samples, n_regions, block)
    n_s, n_p, n_r = x.shape[:3]
    x = x.reshape(n_s, n_p * n_r, *x.shape[3:])
    theta = tarp_vectors(truth, n_regions, block)
    theta = theta.reshape(n_p * n_r, *theta.shape[2:])
    pool = tarp_vectors(reference_maps, n_regions, block)
    pool = pool.reshape(-1, *pool.shape[2:])
    return x, theta, pool


@dataclass(frozen=True)
class ScalingChoice:
    """The chosen likelihood scaling.

    Attributes
    ----------
    t_bar, sigma_t : numpy.ndarray
        Per-bin A(t) parameters, shape ``[n_bin]`` (equal across bins for a joint choice).
    candidate : numpy.ndarray
        Index into the candidate list chosen for each bin, shape ``[n_bin]``.
    max_error : numpy.ndarray
        The chosen candidates' ``max |ECP − α|`` (per bin, or the joint value repeated).
    """

    t_bar: np.ndarray
    sigma_t: np.ndarray
    candidate: np.ndarray
    max_error: np.ndarray

    @property
    def scaling(self) -> LikelihoodScaling:
        """The chosen per-bin scaling."""
        return LikelihoodScaling(tuple(self.t_bar), tuple(self.sigma_t))


def choose_scaling(
    candidates: Sequence[tuple[float, float]],
    errors: np.ndarray,
    n_bin: int,
    per_bin: bool,
    loss: np.ndarray | None = None,
    tolerance: float = 0.0,
    admissible: np.ndarray | None = None,
) -> ScalingChoice:
    """Pick the A(t) parameters: the most accurate among the calibrated, else the best calibrated.

    Parameters
    ----------
    candidates
        ``(t̄, σ_t)`` of each DPS run, length ``n_cand``.
    errors
        ``max |ECP − α|`` of each run: shape ``[n_cand]`` (joint TARP over all bins) when
        ``per_bin`` is False, ``[n_cand, n_bin]`` (TARP of each bin alone) when True.
    n_bin
        Number of tomographic bins.
    per_bin
        Choose per bin (each bin its own candidate) or one pair for all bins.
    loss
        Accuracy of each run on the mocks, shaped like ``errors``, lower is better (e.g. the
        mean squared error of the posterior mean against the truth). ``None``: calibration
        alone decides.
    tolerance
        Runs with ``errors <= tolerance`` count as calibrated; among them the lowest ``loss``
        wins. When none is calibrated (or ``loss`` is None) the lowest ``errors`` wins, of
        the admissible runs if any.
    admissible
        Booleans shaped like ``errors``: runs that pass the other calibration checks (e.g.
        the samples' power against the truth's). A run counts as calibrated only if it is
        admissible too. ``None``: all are.

    Returns
    -------
    ScalingChoice
        Ties go to the earlier candidate.

    Notes
    -----
    TARP with prior references cannot tell the prior from the posterior: a run whose
    likelihood step is switched off too long returns prior samples, which are calibrated
    but carry no information from the data. Calibration is therefore a constraint and
    accuracy the objective ("maximise sharpness subject to calibration", Gneiting et al.
    2007).
    """
    cand = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    errors = np.asarray(errors, dtype=np.float64)
    expected = (len(cand), n_bin) if per_bin else (len(cand),)
    if errors.shape != expected:
        raise ValueError(f"errors have shape {errors.shape}, expected {expected}")
    if not np.all(np.isfinite(errors)):
        raise ValueError(f"{int(np.sum(~np.isfinite(errors)))} calibration errors are not finite")
    if loss is not None:
        loss = np.asarray(loss, dtype=np.float64)
        if loss.shape != expected:
            raise ValueError(f"loss has shape {loss.shape}, expected {expected}")
        if not np.all(np.isfinite(loss)):
            raise ValueError(f"{int(np.sum(~np.isfinite(loss)))} loss values are not finite")
    if tolerance < 0:
        raise ValueError(f"tolerance = {tolerance} must be >= 0")
    if admissible is None:
        admissible = np.ones(expected, dtype=bool)
    admissible = np.asarray(admissible)
    if admissible.shape != expected or admissible.dtype != bool:
        raise ValueError(
            f"admissible has shape {admissible.shape} and dtype {admissible.dtype}, "
            f"expected booleans of shape {expected}"
        )

    def pick(err: np.ndarray, acc: np.ndarray | None, adm: np.ndarray) -> int:
        ok = (err <= tolerance) & adm
        if acc is not None and ok.any():
            return int(np.argmin(np.where(ok, acc, np.inf)))
        # calibration alone: the best TARP among the admissible runs, if there is one
        return int(np.argmin(np.where(adm if adm.any() else True, err, np.inf)))

    if per_bin:
        best = np.array(
            [
                pick(errors[:, b], None if loss is None else loss[:, b], admissible[:, b])
                for b in range(n_bin)
            ]
        )
        err = errors[best, np.arange(n_bin)]
    else:
        best = np.full(n_bin, pick(errors, loss, admissible))
        err = np.full(n_bin, errors[best[0]])
    return ScalingChoice(cand[best, 0], cand[best, 1], best, err)
