"""Per-round client capacities (width ratios r_i^t ∈ (0, 1]): fixed, sampled from a set, or a
trace."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import streams
from .errors import ConfigError


def check_capacities(values: Sequence[float]) -> list[float]:
    """Validate a list of width ratios: non-empty, each a number in (0, 1]."""
    if len(values) == 0:
        raise ConfigError("capacities is empty; give at least one width ratio in (0, 1]")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):   # TOML true is not 1.0
            raise ConfigError(f"capacity {v!r} is not a number; allowed: (0, 1]")
        r = float(v)
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise ConfigError(f"capacity {v!r} is outside (0, 1]")
        out.append(r)
    return out


def read_trace(path: str | Path, clients: int, rounds: int) -> dict[int, list[float]]:
    """Read a CSV trace ``round,client,capacity`` (rounds 1..T, clients 0..M−1, a header line
    allowed; UTF-8, a byte-order mark ignored): every (round, client) pair must appear exactly
    once."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ConfigError(f"cannot read capacity trace {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"capacity trace {str(path)!r} is not UTF-8 text (byte {err.start}); "
                          f"expected CSV lines 'round,client,capacity'") from None
    table: dict[int, dict[int, float]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in line.split(",")]
        if not line.strip() or (lineno == 1 and cells[0].lower() == "round"):
            continue
        try:
            if len(cells) != 3:
                raise ValueError
            t, i, r = int(cells[0]), int(cells[1]), check_capacities([float(cells[2])])[0]
        except (ValueError, ConfigError):
            raise ConfigError(f"capacity trace {str(path)!r} line {lineno}: {line.strip()!r} is "
                              f"not 'round,client,capacity' with capacity in (0, 1]") from None
        if not (1 <= t <= rounds and 0 <= i < clients):
            raise ConfigError(f"capacity trace {str(path)!r} line {lineno}: round {t} client "
                              f"{i} is outside rounds 1..{rounds}, clients 0..{clients - 1}")
        if i in table.setdefault(t, {}):
            raise ConfigError(f"capacity trace {str(path)!r} line {lineno}: round {t} client "
                              f"{i} appears twice")
        table[t][i] = r
    for t in range(1, rounds + 1):
        for i in range(clients):
            if i not in table.get(t, {}):
                raise ConfigError(f"capacity trace {str(path)!r} has no row for round {t} "
                                  f"client {i}")
    return {t: [row[i] for i in range(clients)] for t, row in table.items()}


@dataclass(frozen=True)
class CapacitySchedule:
    """Capacities of M clients per round.

    ``mode="fixed"``: a list of M values, or a shorter list spread in equal blocks (client i
    gets ``values[⌊i·L/M⌋]``, so five values for ten clients give two clients each).
    ``mode="sampled"``: every client draws from ``values`` each round (seeded, dynamic resources).
    ``mode="trace"``: ``trace[t]`` lists the clients' capacities of round t (1-based).
    A client whose capacity changes gets a new submodel in that round.
    """

    values: tuple[float, ...]
    clients: int
    mode: str = "fixed"
    seed: int = 0
    trace: dict[int, list[float]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_capacities(self.values)
        if self.mode not in ("fixed", "sampled", "trace"):
            raise ConfigError(f"capacity mode {self.mode!r} is not one of: fixed, sampled, trace")
        if (self.mode == "trace") != (self.trace is not None):
            raise ConfigError("capacity mode 'trace' goes with a capacity_trace file, and only it")
        if self.mode == "fixed" and len(self.values) > self.clients:
            raise ConfigError(f"{len(self.values)} capacities for {self.clients} clients; "
                              f"give at most one per client")

    def at(self, round: int) -> list[float]:
        """r_i^t for every client i in round ``round`` (0-based, as the engine counts)."""
        m, vals = self.clients, self.values
        if self.trace is not None:
            return list(self.trace[round + 1])
        if self.mode == "sampled":
            rng = streams.rng(self.seed, round, streams.CAPACITIES)
            return [float(vals[k]) for k in rng.integers(0, len(vals), size=m)]
        return [float(vals[i * len(vals) // m]) for i in range(m)]
