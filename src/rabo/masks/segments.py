"""``segments``: explicit per-client channel segments from the config, for controlled cover
numbers (the paper's C_x experiment, docs/algorithm.md §4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy

Segment = tuple[float, float]


def _check(segments: object) -> tuple[tuple[Segment, ...], ...]:
    """Segments as tuples, or a ConfigError naming the first bad value."""
    usage = "one list of [start, end] fractions per client"
    if not isinstance(segments, (list, tuple)) or not segments:
        raise ConfigError(f"segments={segments!r} must be {usage}")
    out = []
    for k, client in enumerate(segments):
        if not isinstance(client, (list, tuple)) or not client:
            raise ConfigError(f"segments[{k}]={client!r} must be a non-empty list of [start, end]")
        pairs = []
        for s, seg in enumerate(client):
            ok = (isinstance(seg, (list, tuple)) and len(seg) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seg))
            if not ok or not 0.0 <= seg[0] < seg[1] <= 1.0:
                raise ConfigError(f"segments[{k}][{s}]={seg!r} must be [start, end] with "
                                  f"0 <= start < end <= 1")
            pairs.append((float(seg[0]), float(seg[1])))
        out.append(tuple(pairs))
    return tuple(out)


def segment_channels(channels: int, segments: Sequence[Segment]) -> Tensor:
    """Channels ⌊start·C⌋ … ⌈end·C⌉−1 of every segment: their sorted union."""
    parts = [torch.arange(math.floor(round(a * channels, 9)), math.ceil(round(b * channels, 9)))
             for a, b in segments]
    return torch.unique(torch.cat(parts))


@dataclass(frozen=True)
class Segments(MaskPolicy):
    """Client k (k-th participant of the round) keeps ``segments[k]`` of every group; r ignored."""

    name = "segments"
    segments: tuple[tuple[Segment, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", _check(self.segments))

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        if len(self.segments) != len(capacities):
            raise ConfigError(f"segments has {len(self.segments)} client entries but "
                              f"{len(capacities)} clients take part; give one per client")
        return [{g: segment_channels(c, client) for g, c in plan.groups.items()}
                for client in self.segments]
