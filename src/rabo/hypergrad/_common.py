"""Shared pieces of the hypergradient estimators (SPEC §3): flat vectors over parameter dicts,
first-order gradients, and products with H = ∇²_yy g and J = ∇²_xy g, exact or by central
differences of first-order gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..problem import Batch, Objective
from ..submodel import Params

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Options:
    """Estimator settings, validated by :func:`rabo.hypergrad.hypergradient`: Q = ``terms``,
    η_N = ``step``, finite-difference μ = ``mu``, coordinate block k = ``coords``, the perturbed
    variable for J v (``perturb``) and the round t."""

    terms: int = 10
    step: float = 0.1
    mu: float = 1e-3
    coords: int | None = None
    perturb: str = "auto"
    t: int = 0


def _cat(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in tensors])


def flatten(params: Params) -> Tensor:
    """The dict's tensors as one flat vector, in key order."""
    return _cat(params.values())


def unflatten(vec: Tensor, like: Params) -> Params:
    """Split a flat vector (or a vmapped row) back into ``like``'s names and shapes."""
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vec[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def leaves(params: Params, requires_grad: bool = False) -> Params:
    """Detached copies (fresh autograd leaves if asked), so no caller's graph is extended."""
    return {n: p.detach().requires_grad_(requires_grad) for n, p in params.items()}


def flat_grad(output: Tensor, wrt: Iterable[Tensor], grad_output: Tensor | None = None,
              **kwargs) -> Tensor:
    """The vector-Jacobian product grad_outputᵀ ∂output/∂wrt, flat; zeros where output does
    not depend on wrt (e.g. f independent of x)."""
    wrt = list(wrt)
    if not output.requires_grad:
        return _cat(torch.zeros_like(p) for p in wrt)
    return _cat(torch.autograd.grad(output, wrt, grad_output, materialize_grads=True, **kwargs))


def outer_grads(problem: Objective, x: Params, y: Params, batch: Batch) -> tuple[Tensor, Tensor]:
    """Flat (∇_x f, ∇_y f) at (x, y) from one backward."""
    xl, yl = leaves(x, True), leaves(y, True)
    both = flat_grad(problem.outer_loss(xl, yl, batch), [*xl.values(), *yl.values()])
    nx = sum(p.numel() for p in x.values())
    return both[:nx], both[nx:]


def implicit(x: Params, fx: Tensor, jv: Tensor) -> Params:
    """ĥ = ∇_x f − J v (eq 9) in x's names and shapes, detached."""
    return {n: p.detach() for n, p in unflatten(fx - jv, x).items()}


def exact_products(problem: Objective, x: Params, y: Params, batch: Batch) -> tuple[MatVec, MatVec]:
    """(u ↦ H u, v ↦ J v) by double backward through one ∇_y g built with create_graph, so the
    parts of g that depend on x only (a backbone's features) are evaluated once."""
    xl, yl = leaves(x, True), leaves(y, True)
    grad_y = flat_grad(problem.inner_loss(xl, yl, batch), yl.values(), create_graph=True)
    return (lambda u: flat_grad(grad_y, yl.values(), u, retain_graph=True),
            lambda v: flat_grad(grad_y, xl.values(), v, retain_graph=True))


def aid(problem: Objective, x: Params, y: Params, batch: Batch,
        solve: Callable[[MatVec, Tensor], Tensor]) -> Params:
    """Approximate implicit differentiation: v = solve(H·, ∇_y f) with exact HVPs, then
    ĥ = ∇_x f − J v with J v = ∇_x ⟨∇_y g, v⟩."""
    fx, fy = outer_grads(problem, x, y, batch)
    hvp, jvp = exact_products(problem, x, y, batch)
    return implicit(x, fx, jvp(solve(hvp, fy)))


def fd_step(mu: float, point: Tensor, direction_norm: float | Tensor) -> float | Tensor:
    """Central-difference step μ' = μ · max(‖z‖, 1) / ‖d‖ for perturbing z along d: the
    perturbation μ'd has norm μ · max(‖z‖, 1), relative to the point whatever d's scale."""
    return mu * max(float(point.norm()), 1.0) / direction_norm


def inner_grads_y(problem: Objective, x: Params, y: Params, batch: Batch, *,
                  x_rows: Tensor | None = None, y_rows: Tensor | None = None) -> Tensor:
    """Rows ∇_y g(x_i, y) for flat x_rows, or ∇_y g(x, y_i) for flat y_rows, batched with vmap
    over the perturbed variable only (the same random draws for every row)."""
    def grad_y(xf: Tensor, yf: Tensor) -> Tensor:
        return grad(lambda v: problem.inner_loss(unflatten(xf, x), unflatten(v, y), batch))(yf)

    xf, yf = flatten(leaves(x)), flatten(leaves(y))
    if x_rows is not None:
        return vmap(grad_y, in_dims=(0, None), randomness="same")(x_rows, yf)
    return vmap(grad_y, in_dims=(None, 0), randomness="same")(xf, y_rows)


def fd_hvp(problem: Objective, x: Params, y: Params, batch: Batch, mu: float) -> MatVec:
    """u ↦ H u ≈ (∇_y g(x, y + μ'u) − ∇_y g(x, y − μ'u)) / 2μ', first-order gradients only."""
    yf = flatten(leaves(y))

    def hvp(u: Tensor) -> Tensor:
        norm = float(u.norm())
        if norm == 0.0:
            return torch.zeros_like(u)
        step = fd_step(mu, yf, norm)
        g = inner_grads_y(problem, x, y, batch, y_rows=torch.stack([yf + step * u, yf - step * u]))
        return (g[0] - g[1]) / (2 * step)

    return hvp


def fd_jvp_y(problem: Objective, x: Params, y: Params, batch: Batch, directions: Tensor,
             weights: Tensor, mu: float) -> Tensor:
    """Σ_i w_i (∇_x g(x, y + μ_i d_i) − ∇_x g(x, y − μ_i d_i)) / 2μ_i for nonzero rows d_i, as
    ∇_x of one scalar: the 2k perturbed y's batched by vmap with x unbatched (x-only parts of g
    run once), then one backward through x."""
    xl, yf = leaves(x, True), flatten(leaves(y))
    steps = fd_step(mu, yf, directions.norm(dim=1))
    shifts = steps[:, None] * directions
    values = vmap(lambda v: problem.inner_loss(xl, unflatten(v, y), batch), randomness="same")(
        torch.cat([yf + shifts, yf - shifts]))
    k = len(directions)
    return flat_grad((weights * (values[:k] - values[k:]) / (2 * steps)).sum(), xl.values())
