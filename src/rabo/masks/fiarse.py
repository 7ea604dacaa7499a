"""``fiarse``: FIARSE's importance-aware submodel extraction made structured (Wu et al., "FIARSE:
Model-Heterogeneous Federated Learning via Importance-Aware Submodel Extraction", NeurIPS 2024).

FIARSE keeps the weights above one global threshold θ_r on |w| over the whole model. Here the
unit is a channel: importance is its L2 norm (as in ``importance``) divided by the root mean
square of the channel norms of its group, so that every group's scores have mean square 1 and
groups of different fan-in and scale compare on one axis. One global threshold over these
scores keeps ≈ r² of the prunable parameters, so layer widths vary with importance.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy, channel_norms, top_channels

BUDGETS = ("square", "width")


def normalised_importance(plan: ChannelPlan, params: Params) -> dict[str, torch.Tensor]:
    """‖w_c‖₂ / RMS_c'(‖w_c'‖₂) per group; a group of all-equal (or all-zero) norms scores 1."""
    out = {}
    for g, norms in channel_norms(plan, params).items():
        rms = norms.pow(2).mean().sqrt()
        out[g] = norms / rms if rms > 0 else torch.ones_like(norms)
    return out


@dataclass(frozen=True)
class Fiarse(MaskPolicy):
    """Channels added in one global order until the submodel holds the parameter budget.

    The order is each group's best channel first (every group keeps at least one), then all
    other channels by descending normalised importance (ties: plan group order, lower index).
    A client keeps the prefix whose parameter count (``plan.sub_shapes``) is closest to its
    budget; budgets grow with r, so larger clients' submodels contain smaller ones'.
    ``budget="square"`` is r²·P over the prunable tensors (those following some group);
    ``budget="width"`` is the parameter count of the uniform ⌈r·C⌉ submodel (``static``'s size).
    """

    name = "fiarse"
    nested = True
    budget: str = "square"

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ConfigError(f"fiarse option budget={self.budget!r}; allowed: "
                              f"{', '.join(BUDGETS)}")

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        groups = list(plan.groups)
        group_ids, channel_ids = self._order(plan, params)
        prefix_widths = np.cumsum(np.eye(len(groups), dtype=np.int64)[group_ids], axis=0)
        shapes = {n: params[n].shape for n, axes in plan.dims.items()
                  if n in params and any(a is not None for a in axes)}

        def count(widths: Sequence[int]) -> int:
            index = {g: torch.arange(int(w)) for g, w in zip(groups, widths)}
            return sum(math.prod(s) for s in plan.sub_shapes(shapes, index).values())

        def count_prefix(k: int) -> int:  # parameters kept by the first k channels of the order
            return count(prefix_widths[k - 1])

        total, first, last = count(list(plan.groups.values())), len(groups), len(group_ids)
        out = []
        for r in capacities:
            uniform = plan.widths(r)  # also checks r ∈ (0, 1]
            if r == 1.0:
                out.append(plan.full_index())
                continue
            budget = r * r * total if self.budget == "square" else count(list(uniform.values()))
            k = min(last, first + bisect.bisect_left(range(first, last + 1), budget,
                                                     key=count_prefix))
            if k > first and budget - count_prefix(k - 1) < count_prefix(k) - budget:
                k -= 1
            kept = group_ids[:k]
            out.append({g: torch.from_numpy(np.sort(channel_ids[:k][kept == i]))
                        for i, g in enumerate(groups)})
        return out

    @staticmethod
    def _order(plan: ChannelPlan, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """(group position, channel) of every channel in the order channels are added."""
        scores = normalised_importance(plan, params)
        group_ids, channel_ids, values, is_first = [], [], [], []
        for i, (g, s) in enumerate(scores.items()):
            group_ids.append(np.full(len(s), i))
            channel_ids.append(np.arange(len(s)))
            values.append(s.numpy())
            first = np.zeros(len(s), dtype=bool)
            first[top_channels(s, 1).numpy()] = True
            is_first.append(first)
        group_ids, channel_ids = np.concatenate(group_ids), np.concatenate(channel_ids)
        values, is_first = np.concatenate(values), np.concatenate(is_first)
        rest = np.flatnonzero(~is_first)
        rest = rest[np.lexsort((channel_ids[rest], group_ids[rest], -values[rest]))]
        order = np.concatenate([np.flatnonzero(is_first), rest])
        return group_ids[order], channel_ids[order]
