"""Mask policies by name (docs/algorithm.md §4): each returns, per client, the kept channels of
every group.

Adding a policy is one file: a frozen dataclass subclassing :class:`MaskPolicy` (its fields are
its options) and one line in ``POLICIES``.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError, UnknownNameError, lookup
from .base import MaskPolicy, channel_norms, top_channels, window
from .coverage import Coverage
from .fiarse import Fiarse
from .full import Full
from .importance import Importance
from .importance_cover import ImportanceCover
from .random import Random
from .rolling import Rolling
from .segments import Segments
from .static import Static

POLICIES: dict[str, type[MaskPolicy]] = {
    cls.name: cls
    for cls in (Full, Static, Rolling, Random, Importance, ImportanceCover, Coverage, Fiarse,
                Segments)
}


def make_policy(name: str, **options: object) -> MaskPolicy:
    """The policy registered as ``name``, built with ``options`` (checked by name and value)."""
    cls = lookup(POLICIES, "policy", name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in options:
        if key not in fields:
            raise UnknownNameError(f"{name} policy option", key, fields or ["(none)"])
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in options:
            raise ConfigError(f"policy {name!r} needs option {f.name!r}")
    return cls(**options)


__all__ = [
    "POLICIES",
    "Coverage",
    "Fiarse",
    "Full",
    "Importance",
    "ImportanceCover",
    "MaskPolicy",
    "Random",
    "Rolling",
    "Segments",
    "Static",
    "channel_norms",
    "make_policy",
    "top_channels",
    "window",
]
