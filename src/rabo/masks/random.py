"""``random``: a fresh uniform subset of ⌈r·C⌉ channels per client, group and round (the usual
random-extraction baseline of submodel training, e.g. Federated Dropout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy


@dataclass(frozen=True)
class Random(MaskPolicy):
    """Uniform subsets drawn from ``rng`` (clients in order, groups in plan order)."""

    name = "random"

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        return [{g: torch.from_numpy(np.sort(rng.choice(plan.groups[g], size=w, replace=False)))
                 for g, w in plan.widths(r).items()} for r in capacities]
