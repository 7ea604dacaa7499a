"""Per-round client capacities (width ratios r_i^t ∈ (0, 1]): fixed, sampled from a set, or a trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


def check_capacities(values: Sequence[float]) -> list[float]:
    """Validate a list of width ratios: non-empty, each a number in (0, 1]."""
    if len(values) == 0:
        raise ConfigError("capacities is empty; give at least one width ratio in (0, 1]")
    out = []
    for v in values:
        try:
            r = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"capacity {v!r} is not a number; allowed: (0, 1]") from None
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise ConfigError(f"capacity {v!r} is outside (0, 1]")
        out.append(r)
    return out


@dataclass(frozen=True)
class CapacitySchedule:
    """Capacities of M clients per round.

    ``mode="fixed"``: a list of M values, or a shorter list spread in equal blocks (client i
    gets ``values[⌊i·L/M⌋]``, so five values for ten clients give two clients each).
    ``mode="sampled"``: every client draws from ``values`` each round (seeded, dynamic resources).
    """

    values: tuple[float, ...]
    clients: int
    mode: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        check_capacities(self.values)
        if self.mode not in ("fixed", "sampled"):
            raise ConfigError(f"capacity mode {self.mode!r} is not one of: fixed, sampled")
        if self.mode == "fixed" and len(self.values) > self.clients:
            raise ConfigError(f"{len(self.values)} capacities for {self.clients} clients; "
                              f"give at most one per client")

    def at(self, round: int) -> list[float]:
        """r_i^t for every client i."""
        m, vals = self.clients, self.values
        if self.mode == "sampled":
            rng = np.random.default_rng([self.seed, round, 0xCA9])
            return [float(vals[k]) for k in rng.integers(0, len(vals), size=m)]
        return [float(vals[i * len(vals) // m]) for i in range(m)]
