"""``rolling``: FedRolex's rolling window (Alam et al., "FedRolex: Model-Heterogeneous Federated
Learning with Rolling Sub-Model Extraction", NeurIPS 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy, window


@dataclass(frozen=True)
class Rolling(MaskPolicy):
    """⌈r·C⌉ consecutive channels from t mod C, wrapping; one start for all clients, so nested."""

    name = "rolling"
    nested = True

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        return [{g: window(plan.groups[g], round % plan.groups[g], w)
                 for g, w in plan.widths(r).items()} for r in capacities]
