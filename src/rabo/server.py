"""Server steps of Algorithm 1 (docs/algorithm.md §2, steps 1, 4, 7, 8): who takes part, masks
for the round, parameter-wise aggregation (eqs 6 and 8: every coordinate averages only the
clients that trained it, a coordinate nobody trained keeps its value) with cover counts. Pure
functions of arrays; both runtimes call them through :func:`rabo.rounds.run_round`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import streams
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


def aggregate(plan: ChannelPlan, params: Params, indices: Sequence[SubmodelIndex],
              deltas: Sequence[Params], gamma: float = 1.0) -> tuple[Params, Params]:
    """θ^{t+1}_j = θ^t_j − γ/N_j Σ_{i∈S_j} Δ_{i,j} where N_j > 0, else θ^t_j.

    ``deltas[i]`` holds client i's Δ_i = θ̃^0 − θ̃^K on its submodel ``indices[i]``.
    Returns the new full parameters and the cover counts N_j.
    """
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for index, delta in zip(indices, deltas, strict=True):
        plan.scatter_add_(total, delta, index)
    count = cover_counts(plan, params, indices)
    new = {n: torch.where(count[n] > 0, p - gamma * total[n] / count[n].clamp(min=1).to(p.dtype), p)
           for n, p in params.items()}
    return new, count


@dataclass(frozen=True)
class CoverStats:
    """C^t = min_j N^{t,j} over all coordinates, and the fraction of coordinates with N = 0."""

    minimum: int
    uncovered: float


def cover_counts(plan: ChannelPlan, params: Params, indices: Sequence[SubmodelIndex]) -> Params:
    """N^{t,j} = |{i : j ∈ I(i)}| for every coordinate j of every tensor."""
    count = {n: torch.zeros(p.shape, dtype=torch.int64) for n, p in params.items()}
    for index in indices:
        ones = {n: torch.ones(s, dtype=torch.int64)
                for n, s in plan.sub_shapes({n: p.shape for n, p in params.items()}, index).items()}
        plan.scatter_add_(count, ones, index)
    return count


def cover_stats(count: Params) -> CoverStats:
    total = sum(int(c.numel()) for c in count.values())
    if total == 0:
        return CoverStats(0, 0.0)
    minimum = min(int(c.min()) for c in count.values() if c.numel())
    zeros = sum(int((c == 0).sum()) for c in count.values())
    return CoverStats(minimum, zeros / total)


def channel_cover(plan: ChannelPlan, names: Sequence[str],
                  indices: Sequence[SubmodelIndex]) -> tuple[int | None, float | None]:
    """How many of ``indices`` keep each channel of the groups that tensors ``names`` follow
    (the channel-level N^{t,c}; a weight's N^{t,j} is at most its two channels' counts): the
    fewest and the mean over those channels, or (None, None) where no tensor is pruned."""
    groups = [g for g in plan.groups
              if any(a is not None and a.group == g for n in names for a in plan.dims.get(n, ()))]
    if not groups:
        return None, None
    counts = []
    for g in groups:
        count = torch.zeros(plan.groups[g], dtype=torch.int64)
        for index in indices:
            count[index[g]] += 1
        counts.append(count)
    every = torch.cat(counts)
    return int(every.min()), float(every.double().mean())
