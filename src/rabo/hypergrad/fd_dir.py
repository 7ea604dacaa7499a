"""Directional finite-difference hypergradient (beyond the paper): second-order free like RAFBO's
`fd`, but J v from ONE central difference along v, J v ≈ (∇_x g(x, y+μ'v) − ∇_x g(x, y−μ'v)) / 2μ',
and v from the Neumann recursion with finite-difference HVPs (SPEC §3)."""

from __future__ import annotations

import torch

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Options, fd_hvp, fd_jvp_y, implicit, outer_grads
from .solvers import neumann_solve


def fd_dir(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Params:
    """ĥ = ∇_x f − J v, with H u and J v both central differences of first-order gradients."""
    fx, fy = outer_grads(problem, x, y, batch)
    v = neumann_solve(fd_hvp(problem, x, y, batch, opts.mu), fy, opts.terms, opts.step)
    if not torch.any(v):  # no direction to difference along: J v = 0
        return implicit(x, fx, torch.zeros_like(fx))
    return implicit(x, fx, fd_jvp_y(problem, x, y, batch, v[None], v.new_ones(1), opts.mu))
