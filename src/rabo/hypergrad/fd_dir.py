"""Directional finite-difference hypergradient: second-order free like `fd`, but J v from ONE
difference along v, J v ≈ (∇_x g(x, y+μ'v) − ∇_x g(x, y−μ'v)) / 2μ' (or forward, against y), and
v from the Neumann recursion with finite-difference HVPs (docs/algorithm.md §3). RAFBO's
estimator: of the second-order-free forms it is the cheapest (2 or 1 evaluations of g for J v
where the coordinate forms need 2k), see :mod:`rabo.methods`."""

from __future__ import annotations

import torch

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import (
    Estimate,
    Options,
    Split,
    fd_hvp,
    fd_jv_y,
    fixed,
    forward_base,
    implicit,
    start,
)
from .solvers import neumann_solve


def fd_dir(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f − J v, with H u and J v both finite differences of first-order gradients on the
    features computed once. Forward differences evaluate g(x, y) once, with its graph: its
    ∇_y is the base of every H u and its value the base of J v."""
    split = Split.of(problem, batch)
    p = start(split, x, y)
    g, grad_y_g = forward_base(p, opts)
    v = neumann_solve(fd_hvp(split, fixed(p.feats), y, opts.mu, grad_y_g), p.grad_y_f,
                      opts.terms, opts.step)
    if not torch.any(v):  # no direction to difference along: J v = 0
        return implicit(x, p)
    return implicit(x, p, fd_jv_y(split, p.feats, y, v[None], v.new_ones(1), opts.mu, g))
