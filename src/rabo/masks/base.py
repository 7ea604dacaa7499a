"""The mask-policy contract (docs/algorithm.md §2 step 1, eq 3) and the channel arithmetic
policies share.

A policy sees the current global model and the round's capacities and returns, per client, a
:data:`~rabo.submodel.SubmodelIndex`: for every channel group of the plan, the sorted int64
indices of the kept channels I. Policies are small frozen dataclasses whose fields are their
options, so ``make_policy(name, **options)`` can check options by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..submodel import ChannelPlan, Params, SubmodelIndex


class MaskPolicy(ABC):
    """Chooses each round the kept channels I_i of every participating client (eq 3).

    ``nested`` is True when, in the same round, a larger capacity's index set contains a smaller
    one's in every group.
    """

    name: ClassVar[str]
    nested: ClassVar[bool] = False

    @abstractmethod
    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        """One index set per client: ``capacities[k]`` is client k's width ratio r in (0, 1],
        ``params`` the full-size global model (x and y in one dict), ``round`` is t."""


def window(channels: int, start: int, size: int) -> Tensor:
    """``size`` consecutive channels from ``start``, wrapping around mod C, returned sorted."""
    return torch.sort((start + torch.arange(size)) % channels).values


def tile(channels: int, start: int, sizes: Sequence[int]) -> list[Tensor]:
    """Windows of ``sizes`` laid end to end around the circle of C channels from ``start``:
    the run of L = Σ sizes positions covers position (start + p) mod C ⌈(L − p)/C⌉ times, i.e.
    ⌊L/C⌋ + 1 times for p < L mod C and ⌊L/C⌋ times after."""
    out = []
    for size in sizes:
        out.append(window(channels, start, size))
        start = (start + size) % channels
    return out


def channel_norms(plan: ChannelPlan, params: Params) -> dict[str, Tensor]:
    """‖w_c‖₂ of every channel c of every group, in float64 on the CPU.

    A channel's weights are its slices of the tensors whose dim 0 follows its group (the
    producing layer's weight and bias, BN affine); a group that no tensor produces falls back
    to every dim of every tensor that follows it. With ``Axis.repeat`` > 1 a channel owns its
    ``repeat`` consecutive entries.
    """
    squares = {g: torch.zeros(c, dtype=torch.float64) for g, c in plan.groups.items()}
    tensors = [(params[n], plan.axes(n, params[n].ndim)) for n in plan.dims if n in params]
    produced = {axes[0].group for _, axes in tensors if axes and axes[0] is not None}
    for p, axes in tensors:
        for d, axis in enumerate(axes):
            if axis is None or (d > 0 and axis.group in produced):
                continue
            rows = p.detach().movedim(d, 0).reshape(p.shape[d], -1)
            per_entry = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square()
            squares[axis.group] += per_entry.cpu().reshape(-1, axis.repeat).sum(1)
    return {g: s.sqrt() for g, s in squares.items()}


def ranking(scores: Tensor) -> Tensor:
    """Channels from the highest score to the lowest (ties to the lower index)."""
    return torch.sort(scores, descending=True, stable=True).indices


def top_channels(scores: Tensor, size: int) -> Tensor:
    """The ``size`` highest-scoring channels (ties to the lower index), returned sorted."""
    return torch.sort(ranking(scores)[:size]).values
