"""AID with a Neumann-series inverse (Ghadimi & Wang 2018, "Approximation methods for bilevel
programming"; the hypergradient of FedNest and FedMBO): v = η_N Σ_{n<Q} (I − η_N H)^n ∇_y f with
exact HVPs by double backward, ĥ = ∇_x f − J v (docs/algorithm.md §3)."""

from __future__ import annotations

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Estimate, Options, aid
from .solvers import neumann_solve


def neumann(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f − J v with v the Q-term Neumann approximation of H⁻¹ ∇_y f."""
    return aid(problem, x, y, batch, lambda hvp, b: neumann_solve(hvp, b, opts.terms, opts.step))
