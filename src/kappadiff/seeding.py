"""Deterministic random streams derived from the configuration seed."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed", "rng_for"]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit integer seed for the stream named by ``keys`` under the master ``seed``.

    Streams for different keys are statistically independent (numpy ``SeedSequence``),
    and the same ``(seed, keys)`` always gives the same integer, on any machine.
    """
    words = [int(seed)]
    for key in keys:
        if isinstance(key, str):
            words.extend(key.encode())
        else:
            words.append(int(key))
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator for the stream named by ``keys``."""
    return np.random.default_rng(derive_seed(seed, *keys))
