"""Server steps of Algorithm 1 (docs/algorithm.md §2, steps 1, 4, 7, 8): who takes part, masks
for the round, parameter-wise aggregation with cover counts. Pure functions of arrays; both
runtimes call them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import streams
from .aggregate import CoverStats, aggregate, cover_counts, cover_stats  # noqa: F401
from .masks import MaskPolicy
from .submodel import ChannelPlan, Params, SubmodelIndex


def participants(clients: int, participation: float, fail_prob: float, seed: int,
                 round: int) -> tuple[list[int], list[int]]:
    """The ⌈p·M⌉ clients sampled for a round, and which of them fail (simulated faults with
    probability q each): a pure function of (seed, round), so a resumed run draws the same."""
    rng = streams.rng(seed, round, streams.PARTICIPANTS)
    chosen = sorted(rng.choice(clients, size=math.ceil(participation * clients), replace=False)
                    .tolist()) if participation < 1.0 else list(range(clients))
    failed = [i for i, u in zip(chosen, rng.random(len(chosen))) if u < fail_prob]
    return chosen, failed


def round_masks(policy: MaskPolicy, plan: ChannelPlan, x: Params, y: Params,
                capacities: Sequence[float], round: int, seed: int) -> list[SubmodelIndex]:
    """(I_x, I_y) per participating client from the global model (eq 3); x and y share one plan."""
    rng = streams.rng(seed, round, streams.MASKS)
    return policy.select(plan, {**x, **y}, list(capacities), round, rng)


def is_finite(delta: Params) -> bool:
    """A client update with NaN or Inf anywhere is rejected, never aggregated."""
    return all(bool(torch.isfinite(d).all()) for d in delta.values())


def server_update(plan: ChannelPlan, params: Params, indices: Sequence[SubmodelIndex],
                  deltas: Sequence[Params], gamma: float = 1.0) -> tuple[Params, CoverStats]:
    """Parameter-wise aggregation (eqs 6, 8) and the round's cover numbers C^t (step 8) over the
    updates received; coordinates nobody covered keep their value."""
    new, count = aggregate(plan, params, indices, deltas, gamma)
    return new, cover_stats(count)
