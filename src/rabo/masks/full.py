"""``full``: every channel, whatever the capacity: full-model training as in FedMBO
(Huang et al., "Achieving Linear Speedup in Non-IID Federated Bilevel Learning", ICML 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy


@dataclass(frozen=True)
class Full(MaskPolicy):
    """All channels of every group for every client (r ignored)."""

    name = "full"
    nested = True

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        return [plan.full_index() for _ in capacities]
