"""Directional finite-difference hypergradient: second-order free like `fd`, but J v from
ONE difference along v, J v ≈ (∇_x g(x, y+μ'v) − ∇_x g(x, y−μ'v)) / 2μ' (or forward,
against y), and v from the Neumann recursion with finite-difference HVPs (eq 9,
docs/algorithm.md §3). RAFBO's estimator: of the second-order-free forms it is the
cheapest (2 or 1 evaluations of g for J v where the coordinate forms need 2k), see
:mod:`rabo.methods`."""

from __future__ import annotations

import torch

from ..problem import Batch, Objective
from ..submodel import Params
from .finite_diff import jv_by_y_differences, neumann_by_differences
from .implicit import Estimate, implicit_step
from .options import EstimatorOptions
from .split import Split


def fd_dir(problem: Objective, x: Params, y: Params, batch: Batch,
           opts: EstimatorOptions, t: int) -> Estimate:
    """ĥ = ∇_x f − J v, with H u and J v both finite differences of first-order gradients
    on the features computed once. Forward differences evaluate g(x, y) once, with its
    graph: its ∇_y is the base of every H u, its value the base of J v (``t`` unused)."""
    split = Split.of(problem, batch)
    point, v, (g, _) = neumann_by_differences(split, x, y, opts)
    if not torch.any(v):  # no direction to difference along: J v = 0
        return implicit_step(x, point)
    return implicit_step(x, point, jv_by_y_differences(split, point.feats, y, v[None],
                                                      v.new_ones(1), opts.mu, g))
