"""The likelihood scaling of DPS, ``A_b(t) = sigmoid((t̄_b − t)/σ_t,b)``, from config to header.

One frozen type, :class:`LikelihoodScaling`, carries the scaling along its whole way: the
``sampling`` section of the configuration, the name of a validation run (``unscaled``,
``t950_s20``), the header cards of a posterior product (``SCALED``, ``TBARb``, ``SIGTb``) and
``results/validation/scaling.fits``, the table the TARP search writes and the data sampler
reads. Its values are per tomographic bin; one value stands for every bin until
:meth:`LikelihoodScaling.per_bin` is asked for a number of bins.

Boruah et al. (2025), eq. (6): the likelihood score is multiplied by ``A(t)``, which switches
the data on late in the reverse diffusion (``t ≪ t̄``); ``A ≡ 1`` is plain DPS (Chung et al.
2023).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .products import ProductError, read_table, write_table

__all__ = ["UNSCALED_RUN", "LikelihoodScaling", "grid_runs", "read_scaling", "write_scaling"]

#: Name of the plain-DPS validation run (``A ≡ 1``).
UNSCALED_RUN = "unscaled"

_RUN_NAME = re.compile(r"t(?P<t_bar>[-+.0-9e]+)_s(?P<sigma_t>[-+.0-9e]+)")


def _values(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} = {value!r} must be one or more finite values")
    return values


@dataclass(frozen=True)
class LikelihoodScaling:
    """The A(t) parameters of a DPS run: per-bin ``t̄`` and ``σ_t``, or unscaled (``A ≡ 1``).

    Parameters
    ----------
    t_bar, sigma_t
        Centre and width of the switch-on, in timesteps: one value for every bin, or one per
        bin. Both empty (the default) means unscaled.

    Examples
    --------
    >>> LikelihoodScaling.from_run_name("t950_s20").per_bin(4)[0]
    array([950., 950., 950., 950.])
    """

    t_bar: tuple[float, ...] = ()
    sigma_t: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.t_bar and not self.sigma_t:
            return
        object.__setattr__(self, "t_bar", _values(self.t_bar, "t_bar"))
        object.__setattr__(self, "sigma_t", _values(self.sigma_t, "sigma_t"))
        if min(self.sigma_t) <= 0:
            raise ValueError(f"sigma_t = {list(self.sigma_t)} must be > 0")

    @property
    def scaled(self) -> bool:
        """False for plain DPS (``A ≡ 1``)."""
        return bool(self.t_bar)

    @classmethod
    def from_sampling(cls, sampling: Mapping[str, Any]) -> LikelihoodScaling:
        """The scaling a ``sampling`` section asks for: ``scaled``, ``t_bar``, ``sigma_t``."""
        if not sampling["scaled"]:
            return cls()
        return cls(_values(sampling["t_bar"], "t_bar"), _values(sampling["sigma_t"], "sigma_t"))

    def per_bin(self, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
        """``t̄`` and ``σ_t`` of each of ``n_bins`` bins, float64 arrays ``[n_bins]``."""
        if not self.scaled:
            raise ValueError("an unscaled run has no t_bar or sigma_t")
        out = []
        for name, values in (("t_bar", self.t_bar), ("sigma_t", self.sigma_t)):
            if len(values) not in (1, n_bins):
                raise ValueError(
                    f"{name} has {len(values)} values, expected 1 or {n_bins} (one per bin)"
                )
            out.append(np.broadcast_to(np.asarray(values, dtype=np.float64), (n_bins,)).copy())
        return out[0], out[1]

    def same_for(self, other: LikelihoodScaling, n_bins: int) -> bool:
        """Whether two scalings give every one of ``n_bins`` bins the same A(t)."""
        if self.scaled != other.scaled:
            return False
        if not self.scaled:
            return True
        return all(
            np.array_equal(a, b)
            for a, b in zip(self.per_bin(n_bins), other.per_bin(n_bins), strict=True)
        )

    # -- validation runs: a grid candidate has one (t̄, σ_t) pair for all bins

    @property
    def pair(self) -> tuple[float, float]:
        """The one ``(t̄, σ_t)`` shared by every bin; an error if bins differ."""
        if not self.scaled or len(set(self.t_bar)) > 1 or len(set(self.sigma_t)) > 1:
            raise ValueError(f"{self} has no single (t_bar, sigma_t) pair for all bins")
        return self.t_bar[0], self.sigma_t[0]

    @property
    def run_name(self) -> str:
        """``unscaled``, or ``t{t̄}_s{σ_t}`` for a grid candidate (one pair for all bins)."""
        if not self.scaled:
            return UNSCALED_RUN
        t_bar, sigma_t = self.pair
        return f"t{t_bar:g}_s{sigma_t:g}"

    @classmethod
    def from_run_name(cls, name: str) -> LikelihoodScaling:
        """The scaling of a validation run named by :attr:`run_name`."""
        if name == UNSCALED_RUN:
            return cls()
        match = _RUN_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"'{name}' is neither '{UNSCALED_RUN}' nor a run t<t_bar>_s<sigma_t>")
        return cls((float(match["t_bar"]),), (float(match["sigma_t"]),))

    # -- header cards of a posterior product

    def cards(self, n_bins: int) -> dict[str, Any]:
        """``SCALED``, and ``TBARb`` / ``SIGTb`` of each bin b = 1..n_bins when scaled."""
        cards: dict[str, Any] = {"SCALED": self.scaled}
        if self.scaled:
            t_bar, sigma_t = self.per_bin(n_bins)
            for b in range(n_bins):
                cards[f"TBAR{b + 1}"] = float(t_bar[b])
                cards[f"SIGT{b + 1}"] = float(sigma_t[b])
        return cards

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> LikelihoodScaling:
        """The scaling a posterior product was drawn with (its :meth:`cards`)."""
        if not header.get("SCALED", False):
            return cls()
        n = sum(1 for key in header if re.fullmatch(r"TBAR\d+", key))
        return cls(
            tuple(float(header[f"TBAR{b}"]) for b in range(1, n + 1)),
            tuple(float(header[f"SIGT{b}"]) for b in range(1, n + 1)),
        )

    def __str__(self) -> str:
        if not self.scaled:
            return "unscaled (A = 1)"
        return f"t_bar {list(self.t_bar)}, sigma_t {list(self.sigma_t)}"


def grid_runs(t_bars: Sequence[float], sigma_ts: Sequence[float]) -> list[str]:
    """Names of the grid candidates ``t̄ × σ_t`` of the scaling search, in grid order.

    A run's name is its scaling (:meth:`LikelihoodScaling.from_run_name`), so a value with
    more digits than the name keeps (6 significant) is refused rather than rounded.
    """
    names = []
    for t_bar in t_bars:
        for sigma_t in sigma_ts:
            scaling = LikelihoodScaling((float(t_bar),), (float(sigma_t),))
            name = scaling.run_name
            if LikelihoodScaling.from_run_name(name) != scaling:
                raise ValueError(
                    f"validation.t_bar {t_bar} / sigma_t {sigma_t}: the run name '{name}' keeps "
                    "6 significant digits; give the grid values with fewer"
                )
            names.append(name)
    return names


# --------------------------------------------------------------------------------------
# results/validation/scaling.fits


def write_scaling(
    path: str | os.PathLike,
    scaling: LikelihoodScaling,
    n_bins: int,
    max_error: np.ndarray,
    runs: Sequence[str],
    header: Mapping[str, Any],
) -> os.PathLike | str:
    """Write the chosen scaling: one row per bin (bin, t_bar, sigma_t, max_error, run).

    ``max_error`` is the chosen runs' ``max |ECP − α|`` and ``runs`` the run each bin's
    values come from; ``header`` holds the provenance and the catalogue identity.
    """
    t_bar, sigma_t = scaling.per_bin(n_bins)
    columns = {
        "bin": np.arange(1, n_bins + 1),
        "t_bar": t_bar,
        "sigma_t": sigma_t,
        "max_error": np.asarray(max_error),
        "run": np.asarray(runs),
    }
    return write_table(path, columns, header={**header, "SCALED": True})


def read_scaling(path: str | os.PathLike) -> LikelihoodScaling:
    """Read ``results/validation/scaling.fits``: the per-bin scaling the TARP search chose."""
    cols, _ = read_table(path)
    for key in ("bin", "t_bar", "sigma_t"):
        if key not in cols:
            raise ProductError(f"{path}: scaling table lacks column '{key}'")
    values = np.concatenate([cols["t_bar"], cols["sigma_t"]])
    if not np.all(np.isfinite(values)) or np.any(cols["sigma_t"] <= 0):
        raise ProductError(f"{path}: t_bar/sigma_t must be finite with sigma_t > 0")
    return LikelihoodScaling(tuple(cols["t_bar"]), tuple(cols["sigma_t"]))
