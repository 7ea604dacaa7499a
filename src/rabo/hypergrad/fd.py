"""RAFBO's second-order-free hypergradient (the paper's eq 9 with PZOBO-style finite differences,
Sow, Ji & Liang 2022): every H u and J v is a central difference of first-order gradients; J v is
taken along coordinate directions of x or y, optionally a block cycling with t (SPEC §3)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import (
    Options,
    fd_hvp,
    fd_jvp_y,
    fd_step,
    flatten,
    implicit,
    inner_grads_y,
    leaves,
    outer_grads,
)
from .solvers import neumann_solve


def coordinate_block(n: int, coords: int | None, t: int,
                     device: torch.device) -> tuple[Tensor, float]:
    """C_t = {(t·k + j) mod n : j < k} and its weight n/k; over a cycle of t every coordinate is
    covered equally often, so the weighted estimate averages to the full one (default and
    largest k: n)."""
    k = n if coords is None else min(coords, n)
    return (t * k + torch.arange(k, device=device)) % n, n / k


def jvp_x_coords(problem: Objective, x: Params, y: Params, batch: Batch, v: Tensor,
                 block: Tensor, mu: float) -> Tensor:
    """[J v]_c = ⟨(∇_y g(x + μ'e_c, y) − ∇_y g(x − μ'e_c, y)) / 2μ', v⟩ for c in the block (zero
    elsewhere): the paper's vector-vector form, the 2k perturbed x's batched by vmap."""
    xf = flatten(leaves(x))
    step = fd_step(mu, xf, 1.0)
    shifts = step * one_hot(block, len(xf)).to(xf)
    g = inner_grads_y(problem, x, y, batch, x_rows=torch.cat([xf + shifts, xf - shifts]))
    k = len(block)
    return torch.zeros_like(xf).index_put_((block,), (g[:k] - g[k:]) @ v / (2 * step))


def fd(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Params:
    """ĥ = ∇_x f − (n/k) Σ_{c∈C_t} (J v along e_c), v from the Neumann recursion with
    finite-difference HVPs; ``perturb="auto"`` differences the variable with fewer coordinates
    (y on a tie: one backward through x instead of 2k gradients)."""
    fx, fy = outer_grads(problem, x, y, batch)
    v = neumann_solve(fd_hvp(problem, x, y, batch, opts.mu), fy, opts.terms, opts.step)
    side = opts.perturb if opts.perturb != "auto" else ("x" if len(fx) < len(fy) else "y")
    n = len(fx) if side == "x" else len(fy)
    block, weight = coordinate_block(n, opts.coords, opts.t, fx.device)
    if side == "x":
        jv = jvp_x_coords(problem, x, y, batch, v, block, opts.mu)
    else:
        jv = fd_jvp_y(problem, x, y, batch, one_hot(block, n).to(v), v[block], opts.mu)
    return implicit(x, fx, weight * jv)
