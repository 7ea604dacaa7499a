"""``importance``: RABO's default policy (the paper's "split the model according to the weight
importance", eq 3): the ⌈r·C⌉ channels of largest L2 weight norm in the current global model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy, channel_norms, top_channels


@dataclass(frozen=True)
class Importance(MaskPolicy):
    """Per group, the top ⌈r·C⌉ channels by ‖w_c‖₂ (ties to the lower index), recomputed every
    round; one ranking serves every client, so the sets are nested."""

    name = "importance"
    nested = True

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        norms = channel_norms(plan, params)
        return [{g: top_channels(norms[g], w) for g, w in plan.widths(r).items()}
                for r in capacities]
