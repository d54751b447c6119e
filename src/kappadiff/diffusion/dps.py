"""Diffusion Posterior Sampling (DPS) of convergence maps from pixelised shear.

The posterior ``p(x | γ) ∝ p(γ | κ(x)) p(x)`` is sampled with the prior's reverse
diffusion (:func:`kappadiff.diffusion.sampler.ddim_sample`), to which this module adds the
likelihood step: at each timestep the gradient of ``χ²/2`` (eq. 3 of Boruah et al. 2025),
evaluated at the Tweedie estimate ``x̂0(x_t)`` and taken through the network with respect to
``x_t`` (Chung et al. 2023), is subtracted with a per-bin step. The step is the reference
form ``ζ A_b(t) β_t`` (ζ = 1 in the reference) with the likelihood scaling
``A_b(t) = sigmoid((t̄_b − t)/σ_t,b)``, or
``A ≡ 1`` (plain DPS, which the paper shows to be biased), or the normalised step
``ζ / ‖y − A(x̂0)‖`` of Chung et al.

Everything here is torch, differentiable where it has to be, and does no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..lensing import kappa_to_shear_torch
from ..scaling import LikelihoodScaling
from .sampler import Guidance

__all__ = [
    "PAPER_SCALING",
    "STEP_FORMS",
    "ShearData",
    "TrajectoryDiagnostic",
    "chi2",
    "dps_guidance",
    "likelihood_scale",
    "shear_data",
]

#: Forms of the likelihood step: ``"beta"`` (A_b(t) β_t, the reference implementation) and
#: ``"normalised"`` (A_b(t) ζ/‖r‖, Chung et al. 2023, Algorithm 1).
STEP_FORMS = ("beta", "normalised")

#: The paper's likelihood scaling: ``t̄ = 500``, ``σ_t = 20`` for every bin (T = 1000).
PAPER_SCALING = LikelihoodScaling((500.0,), (20.0,))


@dataclass(frozen=True)
class ShearData:
    """Observed shear of one patch, as torch tensors on the sampling device.

    Attributes
    ----------
    g1, g2 : Tensor [bin, n, n]
        Mean shear per pixel (DES convention), zero where masked.
    weight : Tensor [bin, n, n]
        Inverse variance ``1/σ²`` per shear component where observed, 0 where masked, so
        masked pixels contribute nothing to χ².
    n_obs : Tensor [bin]
        Observed pixels per bin; χ² has ``2 n_obs`` degrees of freedom (two components).
    """

    g1: torch.Tensor
    g2: torch.Tensor
    weight: torch.Tensor
    n_obs: torch.Tensor

    @property
    def dof(self) -> torch.Tensor:
        """Degrees of freedom of χ² per bin, ``2 n_obs`` (float, [bin])."""
        return 2.0 * self.n_obs.to(torch.float64)


def shear_data(
    g1: np.ndarray,
    g2: np.ndarray,
    sigma: np.ndarray,
    mask: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    source: str = "shear data",
) -> ShearData:
    """Check pixelised shear and turn it into a :class:`ShearData`.

    Parameters
    ----------
    g1, g2, sigma, mask : array [bin, n, n]
        Mean shear per component, its noise σ per component (> 0 where observed), and the
        mask (1 observed, 0 masked), as in ``results/data/patch_*.fits``.
    device
        Torch device of the tensors.
    source
        Name of the file the arrays came from, for error messages.

    Raises
    ------
    ValueError
        If the shapes differ, the mask is not 0/1, or observed pixels have σ ≤ 0 or
        non-finite shear or σ; the message names ``source``, the array and the count.
    """
    arrays = {"G1": g1, "G2": g2, "SIGMA": sigma, "MASK": mask}
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    shape = arrays["G1"].shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"{source}: G1 has shape {shape}, expected [bin, n, n]")
    for name, arr in arrays.items():
        if arr.shape != shape:
            raise ValueError(f"{source}: {name} has shape {arr.shape}, G1 has {shape}")
    m = arrays["MASK"]
    bad = ~np.isin(m, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{source}: MASK has {int(bad.sum())} values other than 0 and 1")
    observed = m == 1.0
    for name in ("G1", "G2", "SIGMA"):
        bad = observed & ~np.isfinite(arrays[name])
        if bad.any():
            raise ValueError(f"{source}: {name} is not finite in {int(bad.sum())} observed pixels")
    bad = observed & ~(arrays["SIGMA"] > 0)
    if bad.any():
        raise ValueError(f"{source}: SIGMA <= 0 in {int(bad.sum())} observed pixels")
    n_obs = observed.sum(axis=(1, 2))
    if (n_obs == 0).any():
        raise ValueError(
            f"{source}: bins {np.flatnonzero(n_obs == 0).tolist()} have no observed pixel"
        )

    weight = np.where(observed, 1.0 / np.where(observed, arrays["SIGMA"], 1.0) ** 2, 0.0)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=device)

    return ShearData(
        g1=tensor(np.where(observed, arrays["G1"], 0.0)),
        g2=tensor(np.where(observed, arrays["G2"], 0.0)),
        weight=tensor(weight),
        n_obs=torch.as_tensor(n_obs, dtype=torch.int64, device=device),
    )


def chi2(kappa: torch.Tensor, data: ShearData, pad: int = 0) -> torch.Tensor:
    """χ² of convergence maps against the observed shear, per map and bin.

    Parameters
    ----------
    kappa : Tensor [..., bin, n, n]
        Convergence (dimensionless), differentiable.
    data
        The observed shear.
    pad
        Zero padding (pixels per side) of the flat-sky operator, as in
        :func:`kappadiff.lensing.kappa_to_shear_torch`.

    Returns
    -------
    Tensor [..., bin]
        ``χ²_b = Σ_i w_i [(γ1_i − γ1(κ)_i)² + (γ2_i − γ2(κ)_i)²]`` summed over the pixels of
        bin b, with ``w_i = 1/σ_i²`` on observed pixels and 0 on masked ones.

    Notes
    -----
    ``−log L = χ²/2`` up to a constant is the Gaussian shear likelihood of eq. (3) of
    Boruah et al. (2025); ``γ(κ)`` is the flat-sky Kaiser-Squires forward operator.
    """
    g1, g2 = kappa_to_shear_torch(kappa, pad=pad)
    r2 = (data.g1 - g1) ** 2 + (data.g2 - g2) ** 2
    return (data.weight * r2).sum(dim=(-2, -1))


def likelihood_scale(
    t: float | torch.Tensor, t_bar: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """Likelihood scaling ``A_b(t) = sigmoid((t̄_b − t)/σ_t,b)`` per bin.

    Parameters
    ----------
    t
        Diffusion timestep in ``[0, T−1]`` (scalar).
    t_bar, sigma_t : Tensor [bin]
        Centre and width of the switch-on, in timesteps (paper: 500 and 20 for T = 1000).

    Returns
    -------
    Tensor [bin]
        ≈ 0 early in the reverse process (t ≫ t̄), ≈ 1 late (t ≪ t̄).
    """
    return torch.sigmoid((t_bar - float(t)) / sigma_t)


def _timestep(t: torch.Tensor | int) -> int:
    """The (common) timestep of a batch, given as an int, a scalar or a [B] tensor."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1)
        if not bool((t == t[0]).all()):
            raise ValueError(f"guidance needs one timestep per batch, got {t.tolist()}")
        return int(t[0])
    return int(t)


def dps_guidance(
    data: ShearData,
    to_kappa: Callable[[torch.Tensor], torch.Tensor],
    alphas_cumprod: torch.Tensor,
    steps: Sequence[int],
    *,
    scaling: LikelihoodScaling = PAPER_SCALING,
    step: str = "beta",
    zeta: float = 1.0,
    pad: int = 0,
) -> Guidance:
    """The DPS likelihood step, as the ``guidance`` hook of ``ddim_sample``.

    Parameters
    ----------
    data
        Observed shear of the patch (``n_bins`` bins).
    to_kappa
        Differentiable map from the network's variable ``x`` to κ, ``[B, bin, n, n]``
        (the prior's per-bin normalisation).
    alphas_cumprod : Tensor [T]
        ``ᾱ_t`` of the diffusion schedule.
    steps
        The decreasing timesteps the sampler visits
        (:func:`kappadiff.diffusion.sampler.timestep_sequence`); the step from ``t`` to the next
        visited ``t'`` uses ``β_eff = 1 − ᾱ_t/ᾱ_t'`` (``ᾱ = 1`` after the last), which is
        ``β_t`` when every timestep is visited.
    scaling
        ``t̄`` and ``σ_t`` of ``A(t)`` (one value or one per bin, timesteps): bin b's step
        is scaled by ``A_b(t)`` (:func:`likelihood_scale`); an unscaled
        :class:`~kappadiff.scaling.LikelihoodScaling` gives plain DPS (``A ≡ 1``).
    step
        ``"beta"``: step ``ζ A_b(t) β_eff(t)`` on the gradient of χ²/2 (ζ = 1 is the
        reference implementation of Boruah et al.); ``"normalised"``: step ``A_b(t) ζ/‖r‖`` on the
        gradient of ``‖r‖² = χ²``, with ``‖r‖`` the whitened residual norm of each sample
        over all bins, held constant (Chung et al. 2023, Algorithm 1).
    zeta
        ``ζ``: multiplier of the ``"beta"`` step (1 for the reference; larger values weight
        the likelihood more where ``A_b(t) > 0``), or the step size of the normalised step
        (dimensionless; Chung et al. use 0.1–1).
    pad
        Zero padding of the flat-sky operator, pixels per side.

    Returns
    -------
    callable
        ``guidance(x_t, t, x0_hat) -> correction`` (shaped like ``x_t``, detached), to be
        subtracted from the DDIM update. ``x0_hat`` must be a differentiable function of
        ``x_t`` (the sampler predicts it with autograd enabled).

    Notes
    -----
    The per-bin step multiplies channel b of ``∇_{x_t} χ²/2`` (the network mixes bins, so
    each channel's gradient holds every bin's likelihood); with ``t̄_b`` equal for all
    bins this is the tempered posterior score ``A(t) ∇ log L`` of the paper's eq. (6).
    """
    if step not in STEP_FORMS:
        raise ValueError(f"step = {step!r}, expected one of {STEP_FORMS}")
    if zeta <= 0:
        raise ValueError(f"zeta = {zeta} must be > 0")
    n_bins = data.g1.shape[0]
    device = data.g1.device
    if scaling.scaled:
        t_bar_b, sigma_t_b = (
            torch.as_tensor(v, dtype=torch.float32, device=device) for v in scaling.per_bin(n_bins)
        )

    abar = alphas_cumprod.detach().to(torch.float64).cpu()
    steps = [int(s) for s in steps]
    if any(a <= b for a, b in zip(steps[:-1], steps[1:], strict=False)):
        raise ValueError("steps must be strictly decreasing")
    beta_eff = {}
    for i, t in enumerate(steps):
        abar_next = (
            abar[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0, dtype=abar.dtype)
        )
        beta_eff[t] = float(1.0 - abar[t] / abar_next)

    def guidance(x_t: torch.Tensor, t: torch.Tensor | int, x0_hat: torch.Tensor) -> torch.Tensor:
        ti = _timestep(t)
        if ti not in beta_eff:
            raise ValueError(f"guidance called at t = {ti}, which is not among the sampler's steps")
        scale = (
            likelihood_scale(ti, t_bar_b, sigma_t_b)
            if scaling.scaled
            else torch.ones(n_bins, device=device)
        )
        with torch.autocast(device_type=x0_hat.device.type, enabled=False):
            c2 = chi2(to_kappa(x0_hat.float()), data, pad=pad)  # [B, bin]
        (grad,) = torch.autograd.grad(0.5 * c2.sum(), x_t)
        if step == "beta":
            factor = (zeta * beta_eff[ti] * scale).view(1, n_bins, 1, 1)
        else:
            # ζ/‖r‖ on ∇‖r‖² = 2 ∇(χ²/2); ‖r‖ per sample over all bins
            norm = c2.detach().sum(dim=-1).clamp_min(1e-30).sqrt()  # [B]
            factor = 2.0 * zeta * scale.view(1, n_bins, 1, 1) / norm.view(-1, 1, 1, 1)
        return (factor * grad).detach()

    return guidance


class TrajectoryDiagnostic:
    """Records how far ``x_t`` drifts from the norm the diffusion's marginals give it.

    Used as the sampler's ``callback(i, t, x_t, x0_hat)``. On the marginals of the forward
    process, ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`` with ε ⟂ x_0 and x_0 from the prior, so per
    bin ``E⟨x_t²⟩ = ᾱ_t m2 + 1 − ᾱ_t`` (⟨·⟩: mean over pixels, ``m2 = E⟨x_0²⟩`` under the
    prior). :meth:`drift` returns ``rms(x_t) / √(ᾱ_t m2 + 1 − ᾱ_t)``: ≈ 1 in
    distribution, away from 1 where the likelihood step kicks ``x_t`` off the marginals
    (the paper's Figure 1, left: unscaled DPS drifts, scaled DPS does not).

    Parameters
    ----------
    alphas_cumprod : Tensor [T]
        ``ᾱ_t`` of the schedule.
    m2
        Prior mean square of ``x_0`` per bin (one value or one per bin); 1 for a prior whose
        normalisation makes each bin zero-mean and unit-variance.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, m2: float | Sequence[float] = 1.0) -> None:
        self._abar = alphas_cumprod.detach().to(torch.float64).cpu()
        self._m2 = torch.as_tensor(np.asarray(m2, dtype=np.float64))
        self.steps: list[int] = []
        self._ms: list[torch.Tensor] = []

    def __call__(
        self, i: int, t: torch.Tensor | int, x_t: torch.Tensor, x0_hat: torch.Tensor
    ) -> None:
        """Record the per-sample, per-bin mean square of ``x_t`` at step ``i``."""
        self.steps.append(_timestep(t))
        self._ms.append(x_t.detach().to(torch.float64).pow(2).mean(dim=(-2, -1)).cpu())

    def drift(self) -> np.ndarray:
        """Drift ratio per recorded step, sample and bin, float64 ``[step, B, bin]``."""
        if not self._ms:
            raise ValueError("no step recorded: pass the diagnostic as the sampler's callback")
        ms = torch.stack(self._ms)  # [step, B, bin]
        abar = self._abar[torch.as_tensor(self.steps)].view(-1, 1, 1)
        expected = abar * self._m2 + (1.0 - abar)
        return (ms / expected).sqrt().numpy()
