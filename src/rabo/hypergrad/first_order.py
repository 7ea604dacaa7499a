"""First-order hypergradient ĥ = ∇_x f: drops the implicit term −J H⁻¹ ∇_y f, as the single-level
submodel baselines (HeteroFL "Static", FedRolex, FIARSE, OAP) do (SPEC §3, §5)."""

from __future__ import annotations

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Options, flat_grad, leaves, unflatten


def first_order(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Params:
    """ĥ = ∇_x f(x, y), y held fixed."""
    xl = leaves(x, True)
    return unflatten(flat_grad(problem.outer_loss(xl, leaves(y), batch), xl.values()), x)
