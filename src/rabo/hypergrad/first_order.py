"""First-order hypergradient ĥ = ∇_x f: drops the implicit term −J H⁻¹ ∇_y f of eq 9, as
the single-level submodel baselines (HeteroFL "Static", FedRolex, FIARSE, OAP) do
(docs/algorithm.md §3, §5)."""

from __future__ import annotations

from ..problem import Objective, Task
from ..submodel import Params
from .flat import detached, flat_grad, unflatten
from .implicit import Estimate, loss_value
from .options import EstimatorOptions
from .split import one_step


def first_order(problem: Objective, x: Params, y: Params, task: Task,
                opts: EstimatorOptions, t: int) -> Estimate:
    """ĥ = ∇_x f(x, y) on the task's batch of f, y held fixed (``opts`` and ``t`` unused). f
    is evaluated once, so the plain ``outer_loss`` serves."""
    xl = detached(x, True)
    f = problem.outer_loss(xl, detached(y), one_step(task)[1])
    return unflatten(flat_grad(f, xl.values()), x), loss_value(f)
