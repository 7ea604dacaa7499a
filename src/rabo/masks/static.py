"""``static``: the first ⌈r·C⌉ channels of every group, HeteroFL's fixed nested submodels
(Diao et al., "HeteroFL: Computation and Communication Efficient Federated Learning for
Heterogeneous Clients", ICLR 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy


@dataclass(frozen=True)
class Static(MaskPolicy):
    """Channels 0 … ⌈r·C⌉−1 of every group, every round."""

    name = "static"
    nested = True

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        return [{g: torch.arange(w) for g, w in plan.widths(r).items()} for r in capacities]
