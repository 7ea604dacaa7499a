"""RAFBO's second-order-free hypergradient (the paper's eq 9 with PZOBO-style finite
differences, Sow, Ji & Liang 2022; Algorithm 2, eq 10): every H u and J v is a difference
of first-order gradients (:mod:`rabo.hypergrad.finite_diff`); J v is taken along
coordinate directions of x or y, optionally a block cycling with t
(docs/algorithm.md §3)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad
from torch.nn.functional import one_hot

from ..problem import Batch, Objective, numel
from ..submodel import Params
from .finite_diff import (
    difference_step,
    differences_along,
    jv_by_y_differences,
    neumann_by_differences,
)
from .flat import detached, flatten, unflatten
from .implicit import Estimate, implicit_step
from .options import EstimatorOptions
from .split import Split


def coordinate_block(n: int, coords: int | None, t: int,
                     device: torch.device) -> tuple[Tensor, float]:
    """C_t = {(t·k + j) mod n : j < k} and its weight n/k; over a cycle of t every
    coordinate is covered equally often, so the weighted estimate averages to the full
    one (default and largest k: n)."""
    k = n if coords is None else min(coords, n)
    return (t * k + torch.arange(k, device=device)) % n, n / k


def jv_by_x_differences(split: Split, x: Params, y: Params, v: Tensor, block: Tensor,
                        mu: float, grad_at_y: Tensor | None = None) -> Tensor:
    """[J v]_c = ⟨(∇_y g(x + μ'e_c, y) − ∇_y g(x − μ'e_c, y)) / 2μ', v⟩ for c in the
    block (zero elsewhere; forward: against ``grad_at_y`` = ∇_y g(x, y)): the paper's
    vector-vector form, the perturbed x's batched by vmap (each recomputes x's features:
    they depend on the perturbed variable)."""
    xf, yf = flatten(detached(x)), flatten(detached(y))
    step = difference_step(mu, xf, 1.0)
    diffs = differences_along(
        lambda row: grad(lambda w: split.inner(split.features(unflatten(row, x)),
                                               unflatten(w, y)))(yf),
        xf, step * one_hot(block, len(xf)).to(xf), grad_at_y)
    return torch.zeros_like(xf).index_put_((block,), diffs @ v / step)


def fd(problem: Objective, x: Params, y: Params, batch: Batch,
       opts: EstimatorOptions, t: int) -> Estimate:
    """ĥ = ∇_x f − (n/k) Σ_{c∈C_t} (J v along e_c), v from the Neumann recursion with
    finite-difference HVPs; ``perturb="auto"`` differences the variable with fewer
    coordinates (y on a tie: one backward through x instead of 2k gradients).
    Differencing y runs on the problem's features computed once; differencing x
    recomputes them per perturbation, so it uses the plain losses
    (:meth:`Split.plain`)."""
    side = opts.perturb
    if side == "auto":
        side = "x" if numel(x) < numel(y) else "y"
    split = Split.plain(problem, batch) if side == "x" else Split.of(problem, batch)
    point, v, (g, grad_y_g) = neumann_by_differences(split, x, y, opts)
    n = numel(x) if side == "x" else numel(y)
    block, weight = coordinate_block(n, opts.coords, t, v.device)
    if side == "x":  # ∇_x ⟨x, J v⟩ = J v, with J v fixed
        jv = jv_by_x_differences(split, x, y, v, block, opts.mu, grad_y_g)
        return implicit_step(x, point, flatten(point.x) @ (weight * jv))
    jv_scalar = jv_by_y_differences(split, point.feats, y, one_hot(block, n).to(v),
                                    v[block], opts.mu, g)
    return implicit_step(x, point, weight * jv_scalar)
