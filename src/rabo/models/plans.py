"""Channel plans of width-scalable networks (SPEC §4): which channel group every parameter
dimension follows, so that a client's submodel is the dense slice along the kept channels.

Coupling rules: a layer's output channels are the next layer's input channels and its norm's
channels; a flatten into a linear layer maps channel c to its ``repeat`` feature columns; a
residual block's output, its shortcut's output and the block input (identity skip) share one
group; network inputs and class outputs follow no group (always full).
"""

from __future__ import annotations

from torch import nn

from ..submodel import Axis, ChannelPlan


class PlanBuilder:
    """Collects groups and tensor axes while a model walks its layers; names get ``prefix``."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.groups: dict[str, int] = {}
        self.dims: dict[str, tuple[Axis | None, ...]] = {}

    def group(self, name: str, channels: int) -> Axis:
        """A new channel group of ``channels`` channels (the output channels of layer ``name``)."""
        key = self.prefix + name
        if key in self.groups:
            raise ValueError(f"channel group {key!r} is declared twice")
        self.groups[key] = channels
        return Axis(key)

    def layer(self, name: str, module: nn.Module, out: Axis | None, inp: Axis | None = None) -> None:
        """Axes of a conv / linear / norm layer's own parameters: a weight's dims 0 and 1 follow
        ``out`` and ``inp`` (kernel dims stay full); 1-D tensors (bias, norm affine) follow ``out``."""
        for pname, p in module.named_parameters(recurse=False):
            axes = (out,) if p.ndim == 1 else (out, inp) + (None,) * (p.ndim - 2)
            self.dims[f"{self.prefix}{name}.{pname}"] = axes

    def build(self) -> ChannelPlan:
        return ChannelPlan(dict(self.groups), dict(self.dims))


class BlockBackbone(nn.Module):
    """A feature extractor that chains ``blocks``, each declaring its own axes with
    ``add_to(plan, name, inp) -> out``; the features are the last block's channels, each over
    ``spatial`` columns (its flattened map; 1 when pooled). Subclasses set the attributes."""

    blocks: nn.Sequential
    spatial: int
    feature_channels: int

    @property
    def out_features(self) -> int:
        return self.feature_channels * self.spatial

    def channel_plan(self, prefix: str = "") -> ChannelPlan:
        plan = PlanBuilder(prefix)
        inp = None
        for i, block in enumerate(self.blocks):
            inp = block.add_to(plan, f"blocks.{i}", inp)
        return plan.build()

    def feature_axis(self, prefix: str = "") -> Axis:
        """The group the output features follow: a head's input columns follow it."""
        return Axis(f"{prefix}blocks.{len(self.blocks) - 1}", self.spatial)


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
                raise ValueError(f"channel group {g!r} has {groups[g]} channels in one plan, {c} in another")
        for name, axes in plan.dims.items():
            if dims.setdefault(name, axes) != axes:
                raise ValueError(f"tensor {name!r} has different axes in two plans")
    return ChannelPlan(groups, dims)
