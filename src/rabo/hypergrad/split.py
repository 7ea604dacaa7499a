"""A problem's two losses split at their x-only features (docs/algorithm.md §3): an
estimator computes the features once per call and differentiates through them once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..problem import Batch, Objective
from ..submodel import Params


@dataclass(frozen=True)
class Split:
    """A problem's two losses split at their x-only part, for one batch: g(x, y) =
    ``inner(features(x), y)`` and f(x, y) = ``outer(features(x), y)`` (docs/algorithm.md §3:
    features that do not depend on the perturbed variable are computed once). :meth:`of` takes
    the split a problem offers (``features``, ``inner_loss_from``, ``outer_loss_from``); without
    one, or from :meth:`plain`, features(x) = x and the plain losses, so every estimator has one
    code path."""

    features: Callable[[Params], Any]
    inner: Callable[[Any, Params], Tensor]
    outer: Callable[[Any, Params], Tensor]

    @classmethod
    def plain(cls, problem: Objective, batch: Batch) -> Split:
        """features = x: every loss evaluation recomputes whatever depends on x."""
        return cls(lambda x: x, lambda x, y: problem.inner_loss(x, y, batch),
                   lambda x, y: problem.outer_loss(x, y, batch))

    @classmethod
    def of(cls, problem: Objective, batch: Batch) -> Split:
        """The problem's own split if it defines ``features``, else :meth:`plain`."""
        if not hasattr(problem, "features"):
            return cls.plain(problem, batch)
        return cls(lambda x: problem.features(x, batch),
                   lambda feats, y: problem.inner_loss_from(feats, y, batch),
                   lambda feats, y: problem.outer_loss_from(feats, y, batch))
