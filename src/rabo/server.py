"""Server steps of Algorithm 1 (SPEC §2, steps 1, 4, 7, 8): masks for the round, parameter-wise
aggregation with cover counts. Pure functions of arrays; both runtimes call them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .aggregate import CoverStats, aggregate, cover_counts, cover_stats  # noqa: F401
from .masks import MaskPolicy
from .submodel import ChannelPlan, Params, SubmodelIndex


def round_masks(policy: MaskPolicy, plan: ChannelPlan, x: Params, y: Params,
                capacities: Sequence[float], round: int, seed: int) -> list[SubmodelIndex]:
    """(I_x, I_y) per participating client from the global model (eq 3); x and y share one plan."""
    rng = np.random.default_rng([seed, round, 0x5E7])
    return policy.select(plan, {**x, **y}, list(capacities), round, rng)


def server_update(plan: ChannelPlan, params: Params, indices: Sequence[SubmodelIndex],
                  deltas: Sequence[Params], gamma: float = 1.0) -> tuple[Params, CoverStats]:
    """Parameter-wise aggregation (eqs 6, 8) and the round's cover numbers C^t (step 8)."""
    new, count = aggregate(plan, params, indices, deltas, gamma)
    return new, cover_stats(count)
