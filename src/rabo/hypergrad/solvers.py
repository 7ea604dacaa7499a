"""Inverse-Hessian-vector solvers on flat vectors, given only a product u ↦ H u (torchopt
style), so exact and finite-difference HVPs share one solver."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import MatVec


def neumann_solve(hvp: MatVec, b: Tensor, terms: int, step: float) -> Tensor:
    """v = η Σ_{n<Q} (I − ηH)^n b ≈ H⁻¹ b: Q terms of the Neumann series, Q − 1 HVPs; converges
    for η ≤ 1/L with L the largest eigenvalue of H."""
    term, total = b, b
    for _ in range(terms - 1):
        term = term - step * hvp(term)
        total = total + term
    return step * total


def cg_solve(hvp: MatVec, b: Tensor, terms: int) -> Tensor:
    """At most Q conjugate-gradient iterations on H v = b from v = 0; stops early once the
    residual is at rounding level (or the curvature along the search direction is not positive)."""
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
