"""Parameter-wise aggregation (eqs 6 and 8): every coordinate averages only the clients that
trained it, and a coordinate nobody trained keeps its value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .submodel import ChannelPlan, Params, SubmodelIndex


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
