"""What a round logs, in the shapes everyone reads: the headline metrics a run shows
as it goes and when it ends, and the mean of a round's per-client values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

HEADLINE = ("inner_loss", "outer_loss", "accuracy", "hypergrad_norm")
"""The metrics the progress bar and a run's closing line show, where a round logs them."""


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`HEADLINE` metrics that ``metrics`` holds (not None), in that order."""
    return {k: metrics[k] for k in HEADLINE if metrics.get(k) is not None}


def mean(values: Sequence[float]) -> float | None:
    """The mean of a round's per-client values, summed left to right; None (null in
    metrics.jsonl) where no client reported one."""
    return sum(values) / len(values) if values else None
