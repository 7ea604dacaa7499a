"""AID with a conjugate-gradient inverse (AID-CG: Pedregosa 2016, "Hyperparameter optimization
with approximate gradient"; Ji, Yang & Liang 2021, "Bilevel optimization: convergence analysis
and enhanced design"): v from Q CG iterations on H v = ∇_y f, ĥ = ∇_x f − J v (docs/algorithm.md
§3)."""

from __future__ import annotations

from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Estimate, Options, aid
from .solvers import cg_solve


def cg(problem: Objective, x: Params, y: Params, batch: Batch, opts: Options) -> Estimate:
    """ĥ = ∇_x f − J v with v from Q conjugate-gradient iterations on H v = ∇_y f."""
    return aid(problem, x, y, batch, lambda hvp, b: cg_solve(hvp, b, opts.terms))
