"""First-order hypergradient ĥ = ∇_x f: drops the implicit term −J H⁻¹ ∇_y f, as the single-level
submodel baselines (HeteroFL "Static", FedRolex, FIARSE, OAP) do (docs/algorithm.md §3, §5)."""

from __future__ import annotations

from ..problem import Objective, Task
from ..submodel import Params
from ._common import Estimate, Options, flat_grad, leaves, one_step, unflatten, value


def first_order(problem: Objective, x: Params, y: Params, task: Task,
                opts: Options) -> Estimate:
    """ĥ = ∇_x f(x, y) on the task's batch of f, y held fixed. f is evaluated once, so the
    plain ``outer_loss`` serves."""
    xl = leaves(x, True)
    f = problem.outer_loss(xl, leaves(y), one_step(task)[1])
    return unflatten(flat_grad(f, xl.values()), x), value(f)
