"""RAFBO's second-order-free hypergradient (the paper's eq 9 with PZOBO-style finite
differences, Sow, Ji & Liang 2022): every H u and J v is a central difference of first-order
gradients; J v is taken along coordinate directions of x or y, optionally a block cycling with t
(docs/algorithm.md §3)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad
from torch.nn.functional import one_hot

from ..problem import Batch, Objective, numel
from ..submodel import Params
from ._common import (
    Estimate,
    Options,
    Split,
    differences,
    fd_hvp,
    fd_jv_y,
    fd_step,
    fixed,
    flatten,
    forward_base,
    implicit,
    leaves,
    start,
    unflatten,
)
from .solvers import neumann_solve


def coordinate_block(n: int, coords: int | None, t: int,
                     device: torch.device) -> tuple[Tensor, float]:
    """C_t = {(t·k + j) mod n : j < k} and its weight n/k; over a cycle of t every coordinate is
    covered equally often, so the weighted estimate averages to the full one (default and
    largest k: n)."""
    k = n if coords is None else min(coords, n)
    return (t * k + torch.arange(k, device=device)) % n, n / k


def jvp_x_coords(split: Split, x: Params, y: Params, v: Tensor, block: Tensor, mu: float,
                 grad_at_y: Tensor | None = None) -> Tensor:
    """[J v]_c = ⟨(∇_y g(x + μ'e_c, y) − ∇_y g(x − μ'e_c, y)) / 2μ', v⟩ for c in the block (zero
    elsewhere; forward: against ``grad_at_y`` = ∇_y g(x, y)): the paper's vector-vector form,
    the perturbed x's batched by vmap (each recomputes x's features: they depend on the
    perturbed variable)."""
    xf, yf = flatten(leaves(x)), flatten(leaves(y))
    step = fd_step(mu, xf, 1.0)
    diffs = differences(lambda row: grad(lambda w: split.inner(split.features(unflatten(row, x)),
                                                               unflatten(w, y)))(yf),
                        xf, step * one_hot(block, len(xf)).to(xf), grad_at_y)
    return torch.zeros_like(xf).index_put_((block,), diffs @ v / step)


def fd(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f − (n/k) Σ_{c∈C_t} (J v along e_c), v from the Neumann recursion with
    finite-difference HVPs; ``perturb="auto"`` differences the variable with fewer coordinates
    (y on a tie: one backward through x instead of 2k gradients). Differencing y runs on the
    problem's features computed once; differencing x recomputes them per perturbation, so it
    uses the plain losses (:meth:`Split.plain`)."""
    side = opts.perturb if opts.perturb != "auto" else ("x" if numel(x) < numel(y) else "y")
    split = Split.plain(problem, batch) if side == "x" else Split.of(problem, batch)
    p = start(split, x, y)
    g, grad_y_g = forward_base(p, opts)
    v = neumann_solve(fd_hvp(split, fixed(p.feats), y, opts.mu, grad_y_g), p.grad_y_f,
                      opts.terms, opts.step)
    n = numel(x) if side == "x" else numel(y)
    block, weight = coordinate_block(n, opts.coords, opts.t, v.device)
    if side == "x":  # ∇_x ⟨x, J v⟩ = J v, with J v fixed
        jv = jvp_x_coords(split, x, y, v, block, opts.mu, grad_y_g)
        return implicit(x, p, flatten(p.x) @ (weight * jv))
    jv_scalar = fd_jv_y(split, p.feats, y, one_hot(block, n).to(v), v[block], opts.mu, g)
    return implicit(x, p, weight * jv_scalar)
