"""``coverage``: windows tiled across the round's clients so every channel is trained whenever
Σ r_i ≥ 1 — the "OAP" baseline (Zhou et al., "Every Parameter Matters: Ensuring the Convergence
of Federated Learning with Dynamic Heterogeneous Models Reduction", NeurIPS 2023), here as the
policy that maximises the cover number C_x = min_j N_x^{t,j} (docs/algorithm.md §2 step 8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy, tile


@dataclass(frozen=True)
class Coverage(MaskPolicy):
    """Client k's window of ⌈r_k·C⌉ channels starts where client k−1's ended (mod C).

    The windows laid end to end are one run of L = Σ_k ⌈r_k·C⌉ positions around the circle of C
    channels, so every channel is covered ⌊L/C⌋ or ⌈L/C⌉ times: the largest minimum any choice
    of windows of these sizes allows. ``rotate`` starts the run at t mod C, so over a long run
    each client visits every channel and the extra (⌈L/C⌉-th) covers move around.
    """

    name = "coverage"
    rotate: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rotate, bool):
            raise ConfigError(f"coverage option rotate={self.rotate!r} must be true or false")

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        widths = [plan.widths(r) for r in capacities]
        out: list[SubmodelIndex] = [{} for _ in capacities]
        for g, channels in plan.groups.items():
            start = round % channels if self.rotate else 0
            for index, kept in zip(out, tile(channels, start, [w[g] for w in widths])):
                index[g] = kept
        return out
