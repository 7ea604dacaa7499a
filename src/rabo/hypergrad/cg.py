"""AID with a conjugate-gradient inverse (AID-CG: Pedregosa 2016, "Hyperparameter
optimization with approximate gradient"; Ji, Yang & Liang 2021, "Bilevel optimization:
convergence analysis and enhanced design"): v from Q CG iterations on H v = ∇_y f with
exact HVPs, ĥ = ∇_x f − J v (eq 9, docs/algorithm.md §3); the other steps are
:func:`~rabo.hypergrad.neumann.aid`'s."""

from __future__ import annotations

import torch
from torch import Tensor

from ..problem import Batch, Objective
from ..submodel import Params
from .flat import MatVec
from .implicit import Estimate
from .neumann import aid
from .options import EstimatorOptions


def cg_solve(hvp: MatVec, b: Tensor, terms: int) -> Tensor:
    """At most Q conjugate-gradient iterations on H v = b from v = 0; stops early once
    the residual is at rounding level (or the curvature along the search direction is
    not positive)."""
    v, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), float(r @ r)
    tol = (torch.finfo(b.dtype).eps ** 2) * rr
    for _ in range(terms):
        if rr <= tol:
            break
        hp = hvp(p)
        curvature = float(p @ hp)
        if not curvature > 0.0:
            break
        alpha = rr / curvature
        v, r = v + alpha * p, r - alpha * hp
        rr_next = float(r @ r)
        p, rr = r + (rr_next / rr) * p, rr_next
    return v


def cg(problem: Objective, x: Params, y: Params, batch: Batch,
       opts: EstimatorOptions, t: int) -> Estimate:
    """ĥ = ∇_x f − J v with v from Q conjugate-gradient iterations on H v = ∇_y f (``t``
    unused)."""
    return aid(problem, x, y, batch, lambda hvp, b: cg_solve(hvp, b, opts.terms))
