"""Directional finite-difference hypergradient (beyond the paper): second-order free like RAFBO's
`fd`, but J v from ONE central difference along v, J v ≈ (∇_x g(x, y+μ'v) − ∇_x g(x, y−μ'v)) / 2μ',
and v from the Neumann recursion with finite-difference HVPs (SPEC §3)."""

from __future__ import annotations

import torch

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Estimate, Options, Split, fd_hvp, fd_jv_y, fixed, implicit, start
from .solvers import neumann_solve


def fd_dir(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f − J v, with H u and J v both central differences of first-order gradients on the
    features computed once."""
    split = Split.of(problem, batch)
    p = start(split, x, y)
    v = neumann_solve(fd_hvp(split, fixed(p.feats), y, opts.mu), p.grad_y_f, opts.terms, opts.step)
    if not torch.any(v):  # no direction to difference along: J v = 0
        return implicit(x, p)
    return implicit(x, p, fd_jv_y(split, p.feats, y, v[None], v.new_ones(1), opts.mu))
