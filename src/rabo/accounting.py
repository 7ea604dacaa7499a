"""Compute and communication accounting (docs/algorithm.md §6): FLOPs counted by FlopCounterMode
around the real client computation, cached per shape, and bytes of every array that crosses the
wire."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from .submodel import ChannelPlan, Params, SubmodelIndex

T = TypeVar("T")

INDEX_ITEMSIZE = 4  # index sets travel as int32 arrays


def shape_key(obj: Any) -> Hashable:
    """A hashable description of the shapes and dtypes inside a (nested) batch or param dict."""
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), str(obj.dtype))
    if isinstance(obj, dict):
        return tuple((k, shape_key(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(shape_key(v) for v in obj)
    return type(obj).__name__


class FlopCache:
    """Counts the FLOPs of a computation the first time its key is seen, then reuses the count:
    the client step's cost depends only on shapes, so counting costs nothing per round."""

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}

    def run(self, key: Hashable, fn: Callable[[], T]) -> tuple[T, int]:
        if key in self.counts:
            return fn(), self.counts[key]
        with FlopCounterMode(display=False) as counter:
            result = fn()
        self.counts[key] = int(counter.get_total_flops())
        return result, self.counts[key]


def nbytes(params: Params) -> int:
    """Bytes of a dict of arrays: Σ numel · itemsize."""
    return sum(int(p.numel()) * p.element_size() for p in params.values())


def index_bytes(plan: ChannelPlan, index: SubmodelIndex) -> int:
    """Bytes of the index sets sent with a submodel; a group kept whole needs none."""
    return sum(len(idx) * INDEX_ITEMSIZE for g, idx in index.items()
               if len(idx) < plan.groups[g])


def message_bytes(plan: ChannelPlan, phase: str, x: Params, y: Params,
                  index: SubmodelIndex) -> int:
    """Bytes the server sends a client for a phase (docs/algorithm.md §6): the inner phase
    carries x̃, ỹ and the index sets; the outer phase carries ỹ^{t+1} (the client keeps x̃ and
    the index sets)."""
    if phase == "inner":
        return nbytes(x) + nbytes(y) + index_bytes(plan, index)
    return nbytes(y)
