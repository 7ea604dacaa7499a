"""A problem's two losses split at their x-only features (docs/algorithm.md §3): an
estimator computes the features once per call and differentiates through them once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from ..problem import Batch, Objective, Task
from ..submodel import Params


@dataclass(frozen=True)
class Split:
    """A problem's two losses split at their x-only part, for one task: g(x, y) =
    ``inner(features(x), y)`` on the task's batch of g and f(x, y) = ``outer(features(x), y)``
    on its batch of f (docs/algorithm.md §3: features that do not depend on the perturbed
    variable are computed once). :meth:`of` takes the split a problem offers (``features``,
    ``inner_loss_from``, ``outer_loss_from``) where its features are not None; otherwise, and
    from :meth:`plain`, features(x) = x and the plain losses, so every estimator has one code
    path."""

    features: Callable[[Params], Any]
    inner: Callable[[Any, Params], Tensor]
    outer: Callable[[Any, Params], Tensor]

    @classmethod
    def plain(cls, problem: Objective, task: Task) -> Split:
        """features = x: every loss evaluation recomputes whatever depends on x."""
        g_data, f_data = one_step(task)
        return cls(lambda x: x, lambda x, y: problem.inner_loss(x, y, g_data),
                   lambda x, y: problem.outer_loss(x, y, f_data))

    @classmethod
    def of(cls, problem: Objective, task: Task) -> Split:
        """The problem's own split: features of g's data, then of f's data (each None where
        the problem has none: that loss is then the plain one, on x)."""
        g_data, f_data = one_step(task)

        def inner(feats: tuple, y: Params) -> Tensor:
            x, of_g, _ = feats
            return problem.inner_loss(x, y, g_data) if of_g is None \
                else problem.inner_loss_from(of_g, y, g_data)

        def outer(feats: tuple, y: Params) -> Tensor:
            x, _, of_f = feats
            return problem.outer_loss(x, y, f_data) if of_f is None \
                else problem.outer_loss_from(of_f, y, f_data)

        return cls(lambda x: (x, problem.features(x, g_data), problem.features(x, f_data)),
                   inner, outer)


def one_step(task: Task) -> tuple[Batch, Batch]:
    """(g's batch, f's batch) of the task a hypergradient is taken on, which holds one of g."""
    if len(task.inner) != 1:
        raise ConfigError(f"a hypergradient reads one batch of g; the task holds "
                          f"{len(task.inner)}")
    return task.inner[0], task.outer
