"""Where every implicit estimator starts and how it ends (eq 9, docs/algorithm.md §3):
at (x, y) the features once, f and ∇_y f (:class:`OuterPoint`); given v ≈ H⁻¹ ∇_y f and
a scalar s with ∇_x s = J v, the implicit step ĥ = ∇_x (f − s) = ∇_x f − J v from ONE
backward through x's computation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..submodel import Params
from .flat import detached, flat_grad, unflatten
from .split import Split

Estimate = tuple[Params, float | Tensor]
"""An estimator's result: ĥ, and the outer loss f(x, y) it evaluated on the way (a vector
of per-client values for a stacked problem)."""


def loss_value(loss: Tensor) -> float | Tensor:
    """A loss's value: a float, or the detached vector of a stacked problem's losses."""
    return float(loss.detach()) if loss.dim() == 0 else loss.detach()


@dataclass(frozen=True)
class OuterPoint:
    """Where every implicit estimator starts at (x, y): autograd leaves ``x``, ``y``, the
    features computed once (``feats``, differentiable in x), f with its graph kept and
    ∇_y f (flat)."""

    split: Split
    x: Params
    y: Params
    feats: Any
    f: Tensor
    grad_y_f: Tensor

    @classmethod
    def at(cls, split: Split, x: Params, y: Params) -> OuterPoint:
        """Features once, then f and ∇_y f from a backward through f's y-side only."""
        xl, yl = detached(x, True), detached(y, True)
        feats = split.features(xl)
        f = split.outer(feats, yl)
        return cls(split, xl, yl, feats, f, flat_grad(f, yl.values(), retain_graph=True))


def implicit_step(x: Params, point: OuterPoint, s: Tensor | float = 0.0) -> Estimate:
    """ĥ = ∇_x (f − s) in x's names and shapes, detached, from ONE backward through x's
    computation (a backbone's features): with ∇_x s = J v, eq 9. Also returns f."""
    grads = unflatten(flat_grad(point.f.sum() - s, point.x.values()), x)
    return {n: p.detach() for n, p in grads.items()}, loss_value(point.f)
