"""First-order hypergradient ĥ = ∇_x f: drops the implicit term −J H⁻¹ ∇_y f, as the single-level
submodel baselines (HeteroFL "Static", FedRolex, FIARSE, OAP) do (docs/algorithm.md §3, §5)."""

from __future__ import annotations

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Estimate, Options, flat_grad, leaves, unflatten, value


def first_order(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f(x, y), y held fixed. f is evaluated once, so the plain ``outer_loss`` serves (a
    problem's ``features`` may also compute the inner data's, which f does not need)."""
    xl = leaves(x, True)
    f = problem.outer_loss(xl, leaves(y), batch)
    return unflatten(flat_grad(f, xl.values()), x), value(f)
