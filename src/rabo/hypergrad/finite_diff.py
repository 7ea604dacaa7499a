"""Finite-difference products of first-order gradients, shared by ``fd`` and ``fd-dir``
(the paper's second-order-free estimator, Algorithm 2 and eq 10; docs/algorithm.md §3):
H u as a difference of ∇_y g along u, J v as ∇_x of differences of g along directions
in y, and v from the Neumann recursion (:func:`~rabo.hypergrad.neumann.neumann_solve`)
on those H u."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap
from torch.utils._pytree import tree_map_only

from ..submodel import Params
from .flat import MatVec, detached, flat_grad, flatten, unflatten
from .implicit import OuterPoint
from .neumann import neumann_solve
from .options import EstimatorOptions
from .split import Split

ForwardBase = tuple[Tensor | None, Tensor | None]
"""(g(x, y) with its graph, ∇_y g(x, y)): the base of every forward difference;
(None, None) for central differences."""


def difference_step(mu: float, point: Tensor,
                    direction_norm: float | Tensor) -> float | Tensor:
    """Finite-difference step μ' = μ · max(‖z‖, 1) / ‖d‖ for perturbing z along d: the
    perturbation μ'd has norm μ · max(‖z‖, 1): relative to the point, whatever ‖d‖."""
    return mu * max(float(point.norm()), 1.0) / direction_norm


def map_rows(function: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """``function`` on each row, by vmap over the rows only: what the function closes
    over (the features, the other variable) is computed once and unbatched; the same
    random draws for every row."""
    return vmap(function, randomness="same")(rows)


def forward_base(point: OuterPoint, opts: EstimatorOptions) -> ForwardBase:
    """The base of every forward difference, evaluated once: g(x, y) with its graph (the
    base of J v's differences of g) and ∇_y g(x, y) (the base of H u's differences of
    ∇_y g); (None, None) for central differences, which need no base."""
    if opts.difference != "forward":
        return None, None
    g = point.split.inner(point.feats, point.y)
    return g, flat_grad(g, point.y.values(), retain_graph=True)


def differences_along(function: Callable[[Tensor], Tensor], point: Tensor,
                      shifts: Tensor, at_point: Tensor | None = None) -> Tensor:
    """Row i, per unit step: (function(z + s_i) − function(z − s_i)) / 2 (central), or
    function(z + s_i) − ``at_point`` with ``at_point`` = function(z) (forward: k
    evaluations instead of 2k); divided by μ_i it is the derivative along s_i / μ_i."""
    if at_point is not None:
        return map_rows(function, point + shifts) - at_point
    values = map_rows(function, torch.cat([point + shifts, point - shifts]))
    return (values[:len(shifts)] - values[len(shifts):]) / 2


def hvp_by_differences(split: Split, feats: Any, y: Params, mu: float,
                       grad_at_y: Tensor | None = None) -> MatVec:
    """u ↦ H u ≈ (∇_y g(x, y + μ'u) − ∇_y g(x, y − μ'u)) / 2μ', or, given ``grad_at_y`` =
    ∇_y g(x, y) (:func:`forward_base`), (∇_y g(x, y + μ'u) − ∇_y g(x, y)) / μ': one
    first-order gradient per product instead of two. On features carrying no gradient."""
    yf = flatten(detached(y))
    grad_y = grad(lambda v: split.inner(feats, unflatten(v, y)))

    def hvp(u: Tensor) -> Tensor:
        norm = float(u.norm())
        if norm == 0.0:
            return torch.zeros_like(u)
        step = difference_step(mu, yf, norm)
        return differences_along(grad_y, yf, (step * u)[None], grad_at_y)[0] / step

    return hvp


def neumann_by_differences(
        split: Split, x: Params, y: Params,
        opts: EstimatorOptions) -> tuple[OuterPoint, Tensor, ForwardBase]:
    """The start of ``fd`` and ``fd-dir``: the point (x, y), v ≈ H⁻¹ ∇_y f from the
    Neumann recursion with :func:`hvp_by_differences` on the features detached (H u
    carries no gradient to x), and the forward base it used (reused by J v)."""
    point = OuterPoint.at(split, x, y)
    base = forward_base(point, opts)
    fixed_feats = tree_map_only(Tensor, Tensor.detach, point.feats)
    v = neumann_solve(hvp_by_differences(split, fixed_feats, y, opts.mu, base[1]),
                      point.grad_y_f, opts.terms, opts.step)
    return point, v, base


def jv_by_y_differences(split: Split, feats: Any, y: Params, directions: Tensor,
                        weights: Tensor, mu: float,
                        at_y: Tensor | None = None) -> Tensor:
    """The scalar s = Σ_i w_i (g(x, y + μ_i d_i) − g(x, y − μ_i d_i)) / 2μ_i (given
    ``at_y`` = g(x, y) from :func:`forward_base`: (g(x, y + μ_i d_i) − g(x, y)) / μ_i)
    for nonzero rows d_i, whose ∇_x is the finite-difference J (Σ_i w_i d_i): the
    perturbed y's batched by vmap on the features (differentiable in x, computed once),
    so ∇_x s is one backward through x."""
    yf = flatten(detached(y))
    steps = difference_step(mu, yf, directions.norm(dim=1))
    diffs = differences_along(lambda v: split.inner(feats, unflatten(v, y)), yf,
                              steps[:, None] * directions, at_y)
    return (weights * diffs / steps).sum()
