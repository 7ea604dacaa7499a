"""Structured submodels: a channel plan maps every tensor dimension to a channel group, and a
client's submodel is the dense slice of every tensor along the kept channels (docs/algorithm.md
§4, eq 4).

A ``SubmodelIndex`` holds, per channel group, the sorted kept channel indices ``I``; x and y
share one plan, so a head's input columns follow the backbone's kept channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import ConfigError, PlanError

Params = dict[str, Tensor]
SubmodelIndex = dict[str, Tensor]


@dataclass(frozen=True)
class Axis:
    """A tensor dimension that follows channel group ``group``; channel c covers the ``repeat``
    consecutive entries ``c*repeat … c*repeat+repeat-1`` (a flatten of C×H×W into features)."""

    group: str
    repeat: int = 1


def width(channels: int, capacity: float) -> int:
    """Kept channels ⌈r·C⌉ (at least 1) of a group of C channels at width ratio r."""
    if not (0.0 < capacity <= 1.0):
        raise ConfigError(f"capacity {capacity!r} is outside (0, 1]")
    return max(1, min(channels, math.ceil(round(capacity * channels, 9))))


@dataclass(frozen=True)
class ChannelPlan:
    """Which channel group each dimension of each named tensor follows (None: always full).

    ``groups`` maps a group name to its channel count C. Tensors not in ``dims`` are never pruned.
    """

    groups: dict[str, int]
    dims: dict[str, tuple[Axis | None, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, axes in self.dims.items():
            for axis in axes:
                if axis is not None and axis.group not in self.groups:
                    known = ", ".join(sorted(self.groups)) or "none"
                    raise PlanError(f"ChannelPlan: tensor {name!r} follows group "
                                    f"{axis.group!r}, which is not one of its groups "
                                    f"(known: {known})")

    # --- index sets -------------------------------------------------------------------------
    def full_index(self) -> SubmodelIndex:
        """Every channel of every group (capacity 1)."""
        return {g: torch.arange(c) for g, c in self.groups.items()}

    def widths(self, capacity: float) -> dict[str, int]:
        """⌈r·C⌉ per group."""
        return {g: width(c, capacity) for g, c in self.groups.items()}

    def axes(self, name: str, ndim: int) -> tuple[Axis | None, ...]:
        axes = self.dims.get(name, ())
        return tuple(axes) + (None,) * (ndim - len(axes))

    def coords(self, axis: Axis | None, index: SubmodelIndex, size: int) -> Tensor:
        """The kept coordinates along one tensor dimension."""
        if axis is None:
            return torch.arange(size)
        chans = index[axis.group].long()
        if axis.repeat == 1:
            return chans
        return (chans[:, None] * axis.repeat + torch.arange(axis.repeat)).reshape(-1)

    def _grid(self, name: str, shape: torch.Size, index: SubmodelIndex) -> tuple[Tensor, ...]:
        """Broadcastable index tensors selecting the kept block of tensor ``name``."""
        ndim = len(shape)
        grid = []
        for d, axis in enumerate(self.axes(name, ndim)):
            view = [1] * ndim
            view[d] = -1
            grid.append(self.coords(axis, index, shape[d]).view(view))
        return tuple(grid)

    def is_full(self, name: str, index: SubmodelIndex) -> bool:
        return all(a is None or len(index[a.group]) == self.groups[a.group]
                   for a in self.dims.get(name, ()))

    # --- extract / scatter ------------------------------------------------------------------
    def extract(self, params: Params, index: SubmodelIndex) -> Params:
        """θ[I]: dense, smaller copies of every tensor along the kept channels (eq 4)."""
        out = {}
        for name, p in params.items():
            out[name] = p.clone() if self.is_full(name, index) \
                else p[self._grid(name, p.shape, index)]
        return out

    def scatter(self, sub: Params, index: SubmodelIndex, full: Params) -> Params:
        """A copy of ``full`` with the kept coordinates replaced by ``sub``; the rest untouched."""
        out = {}
        for name, p in full.items():
            q = p.clone()
            q[self._grid(name, p.shape, index)] = sub[name].to(p.dtype)
            out[name] = q
        return out

    def scatter_add_(self, total: Params, sub: Params, index: SubmodelIndex) -> None:
        """total[I] += sub, in place: the sum half of parameter-wise aggregation."""
        for name, t in total.items():
            t.index_put_(self._grid(name, t.shape, index), sub[name].to(t.dtype), accumulate=True)

    def sub_shapes(self, shapes: dict[str, torch.Size], index: SubmodelIndex) -> dict[str, tuple]:
        """Shapes of the extracted tensors, without touching data."""
        return {n: tuple(len(self.coords(a, index, s)) for a, s in zip(self.axes(n, len(sh)), sh))
                for n, sh in shapes.items()}

    def restrict(self, names: set[str] | list[str]) -> ChannelPlan:
        """The same plan with only ``names`` prunable (the per-problem x/y pruning switch)."""
        return ChannelPlan(self.groups, {n: a for n, a in self.dims.items() if n in names})


def vector_plan(params: Params, group_of: dict[str, str] | None = None) -> ChannelPlan:
    """A plan for plain parameter tensors: each tensor's leading dimension is its own group
    (or the group named in ``group_of``, so that several tensors can share one index set)."""
    group_of = group_of or {}
    groups: dict[str, int] = {}
    dims: dict[str, tuple[Axis | None, ...]] = {}
    for name, p in params.items():
        g = group_of.get(name, name)
        if groups.setdefault(g, p.shape[0]) != p.shape[0]:
            raise PlanError(f"tensors sharing group {g!r} disagree on its size: {groups[g]} "
                            f"and {p.shape[0]} ({name!r})")
        dims[name] = (Axis(g),)
    return ChannelPlan(groups, dims)
