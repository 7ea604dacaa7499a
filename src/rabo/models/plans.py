"""Channel plans of width-scalable networks (docs/algorithm.md §4): which channel group every
parameter dimension follows, so that a client's submodel is the dense slice along the kept
channels. Every built-in model's plan is traced from the model (:mod:`rabo.models.trace`), the
same way a user's model gets its plan; this module adds the pieces that join plans.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import PlanError
from ..submodel import Axis, ChannelPlan
from .trace import output_axis, trace_plan


class Planned(nn.Module):
    """A model whose channel plan is traced (:func:`~rabo.models.trace.trace_plan`) from one
    forward on :meth:`example_input`; ``full_outputs`` False keeps the output features a
    channel group, for a backbone whose features a head consumes."""

    full_outputs = True

    def example_input(self) -> Tensor:
        """A small input batch of the right shape (zeros; float32)."""
        raise NotImplementedError

    def traced_input(self) -> Tensor:
        return self.example_input().to(next(self.parameters()).dtype)

    def channel_plan(self, prefix: str = "") -> ChannelPlan:
        """The plan keyed by ``prefix`` + the ``named_parameters()`` names."""
        return with_prefix(trace_plan(self, self.traced_input(), self.full_outputs), prefix)


class BlockBackbone(Planned):
    """A feature extractor that chains ``blocks``; its features are the last block's
    ``feature_channels`` channels, each over ``spatial`` columns (its flattened map; 1 when
    pooled). Subclasses set the attributes."""

    full_outputs = False
    blocks: nn.Sequential
    spatial: int
    feature_channels: int

    @property
    def out_features(self) -> int:
        return self.feature_channels * self.spatial

    def feature_axis(self, prefix: str = "") -> Axis:
        """The group the output features follow: a head's input columns follow it."""
        axis = output_axis(self, self.traced_input())
        assert axis is not None and axis.repeat == self.spatial
        return Axis(prefix + axis.group, axis.repeat)


def with_prefix(plan: ChannelPlan, prefix: str) -> ChannelPlan:
    """``plan`` with ``prefix`` before every tensor and group name (a module inside a larger
    one, e.g. the backbone of a few-shot problem)."""
    return ChannelPlan({prefix + g: c for g, c in plan.groups.items()},
                       {prefix + n: tuple(None if a is None else Axis(prefix + a.group, a.repeat)
                                          for a in axes) for n, axes in plan.dims.items()})


def head_plan(features: Axis, channels: int, prefix: str = "head.") -> ChannelPlan:
    """Plan of a linear head (``{prefix}weight`` N×d, ``{prefix}bias`` N) on a backbone's
    features: the weight's input columns follow the backbone's feature group ``features`` (of
    ``channels`` channels, ``repeat`` columns each); class rows and the bias stay full."""
    return ChannelPlan({features.group: channels},
                       {f"{prefix}weight": (None, features), f"{prefix}bias": (None,)})


def merge_plans(*plans: ChannelPlan) -> ChannelPlan:
    """One plan over the union of the plans' tensors (e.g. backbone x and head y). A group named
    in several plans is one index set and must have one size; a tensor must have one set of axes."""
    groups: dict[str, int] = {}
    dims: dict[str, tuple[Axis | None, ...]] = {}
    for plan in plans:
        for g, c in plan.groups.items():
            if groups.setdefault(g, c) != c:
                raise PlanError(f"channel group {g!r} has {groups[g]} channels in one plan, "
                                f"{c} in another")
        for name, axes in plan.dims.items():
            if dims.setdefault(name, axes) != axes:
                raise PlanError(f"tensor {name!r} has different axes in two plans")
    return ChannelPlan(groups, dims)
