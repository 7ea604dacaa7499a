"""AID with a Neumann-series inverse (Ghadimi & Wang 2018, "Approximation methods for
bilevel programming"; the hypergradient of FedNest and FedMBO), the whole algorithm
(eq 9, docs/algorithm.md §3):

1. at (x, y): the features once, f and ∇_y f (:meth:`OuterPoint.at`);
2. ∇_y g on the features, with its graph: exact HVPs H u = ∇_y ⟨∇_y g, u⟩ by double
   backward through it;
3. v = η_N Σ_{n<Q} (I − η_N H)^n ∇_y f ≈ H⁻¹ ∇_y f (:func:`neumann_solve`, Q − 1 HVPs);
4. ĥ = ∇_x [f − ⟨∇_y g, v⟩] with v fixed, i.e. ∇_x f − J v, in one backward through x
   (:func:`implicit_step`).

``cg`` shares :func:`aid` with another solver in step 3; ``fd`` and ``fd-dir`` run step 3
on finite-difference HVPs (:mod:`rabo.hypergrad.finite_diff`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..problem import Batch, Objective
from ..submodel import Params
from .flat import MatVec, flat_grad
from .implicit import Estimate, OuterPoint, implicit_step
from .options import EstimatorOptions
from .split import Split


def neumann_solve(hvp: MatVec, b: Tensor, terms: int, step: float) -> Tensor:
    """v = η Σ_{n<Q} (I − ηH)^n b ≈ H⁻¹ b: Q terms of the Neumann series, Q − 1 HVPs;
    converges for η ≤ 1/L with L the largest eigenvalue of H."""
    term, total = b, b
    for _ in range(terms - 1):
        term = term - step * hvp(term)
        total = total + term
    return step * total


def aid(problem: Objective, x: Params, y: Params, batch: Batch,
        solve: Callable[[MatVec, Tensor], Tensor]) -> Estimate:
    """Approximate implicit differentiation, steps 1–4 above: v = solve(H·, ∇_y f) with
    exact HVPs by double backward through one ∇_y g built on the features, then
    ĥ = ∇_x f − J v."""
    point = OuterPoint.at(Split.of(problem, batch), x, y)
    grad_y_g = flat_grad(point.split.inner(point.feats, point.y), point.y.values(),
                         create_graph=True)
    v = solve(lambda u: flat_grad(grad_y_g, point.y.values(), u, retain_graph=True),
              point.grad_y_f)
    return implicit_step(x, point, grad_y_g @ v)


def neumann(problem: Objective, x: Params, y: Params, batch: Batch,
            opts: EstimatorOptions, t: int) -> Estimate:
    """ĥ = ∇_x f − J v, v the Q-term Neumann approximation of H⁻¹ ∇_y f (t unused)."""
    return aid(problem, x, y, batch,
               lambda hvp, b: neumann_solve(hvp, b, opts.terms, opts.step))
