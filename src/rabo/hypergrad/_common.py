"""Shared pieces of the hypergradient estimators (docs/algorithm.md §3): flat vectors over
parameter dicts, first-order gradients, the losses split at their x-only features
(:class:`Split`), and products with H = ∇²_yy g and J = ∇²_xy g, exact or by central differences
of first-order gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap
from torch.utils._pytree import tree_map_only

from ..errors import ConfigError
from ..problem import Batch, Objective, Task
from ..submodel import Params

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Options:
    """Estimator settings, validated by :func:`rabo.hypergrad.hypergradient`: Q = ``terms``,
    η_N = ``step``, finite-difference μ = ``mu``, coordinate block k = ``coords``, the perturbed
    variable for J v (``perturb``), the round t and the finite-difference scheme
    (``difference``: "central", O(μ²) error, or "forward", O(μ) error at half the gradients)."""

    terms: int = 10
    step: float = 0.1
    mu: float = 1e-3
    coords: int | None = None
    perturb: str = "auto"
    t: int = 0
    difference: str = "central"


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
    not depend on wrt (e.g. f independent of x). A vector ``output`` (the per-client losses of a
    stacked problem, whose parameters are disjoint) is differentiated as its sum."""
    wrt = list(wrt)
    if output.dim() > 0 and grad_output is None:
        output = output.sum()
    if not output.requires_grad:
        return _cat(torch.zeros_like(p) for p in wrt)
    return _cat(torch.autograd.grad(output, wrt, grad_output, materialize_grads=True, **kwargs))


@dataclass(frozen=True)
class Split:
    """A problem's two losses split at their x-only part, for one task: g(x, y) =
    ``inner(features(x), y)`` on the task's batch of g and f(x, y) = ``outer(features(x), y)``
    on its batch of f (docs/algorithm.md §3: features that do not depend on the perturbed
    variable are computed once). :meth:`of` takes the split a problem offers (``features``,
    ``inner_loss_from``, ``outer_loss_from``) where its features are not None; otherwise, and
    from :meth:`plain`, features(x) = x and the plain losses, so every estimator has one code
    path."""

    features: Callable[[Params], Any]
    inner: Callable[[Any, Params], Tensor]
    outer: Callable[[Any, Params], Tensor]

    @classmethod
    def plain(cls, problem: Objective, task: Task) -> Split:
        """features = x: every loss evaluation recomputes whatever depends on x."""
        g_data, f_data = one_step(task)
        return cls(lambda x: x, lambda x, y: problem.inner_loss(x, y, g_data),
                   lambda x, y: problem.outer_loss(x, y, f_data))

    @classmethod
    def of(cls, problem: Objective, task: Task) -> Split:
        """The problem's own split: features of g's data, then of f's data (each None where
        the problem has none: that loss is then the plain one, on x)."""
        g_data, f_data = one_step(task)

        def inner(feats: tuple, y: Params) -> Tensor:
            x, of_g, _ = feats
            return problem.inner_loss(x, y, g_data) if of_g is None \
                else problem.inner_loss_from(of_g, y, g_data)

        def outer(feats: tuple, y: Params) -> Tensor:
            x, _, of_f = feats
            return problem.outer_loss(x, y, f_data) if of_f is None \
                else problem.outer_loss_from(of_f, y, f_data)

        return cls(lambda x: (x, problem.features(x, g_data), problem.features(x, f_data)),
                   inner, outer)


def one_step(task: Task) -> tuple[Batch, Batch]:
    """(g's batch, f's batch) of the task a hypergradient is taken on, which holds one of g."""
    if len(task.inner) != 1:
        raise ConfigError(f"a hypergradient reads one batch of g; the task holds "
                          f"{len(task.inner)}")
    return task.inner[0], task.outer


Estimate = tuple[Params, float | Tensor]
"""An estimator's result: ĥ, and the outer loss f(x, y) it evaluated on the way (a vector of
per-client values for a stacked problem)."""


def value(loss: Tensor) -> float | Tensor:
    """A loss's value: a float, or the detached vector of a stacked problem's per-client losses."""
    return float(loss.detach()) if loss.dim() == 0 else loss.detach()


@dataclass(frozen=True)
class Point:
    """What every implicit estimator starts from at (x, y): autograd leaves ``x``, ``y``, the
    features computed once (differentiable in x), f with its graph kept and ∇_y f (flat)."""

    split: Split
    x: Params
    y: Params
    feats: Any
    f: Tensor
    grad_y_f: Tensor


def start(split: Split, x: Params, y: Params) -> Point:
    """Features once, then f and ∇_y f from a backward through f's y-side only."""
    xl, yl = leaves(x, True), leaves(y, True)
    feats = split.features(xl)
    f = split.outer(feats, yl)
    return Point(split, xl, yl, feats, f, flat_grad(f, yl.values(), retain_graph=True))


def fixed(feats: Any) -> Any:
    """The features detached: for y-side work whose result must carry no gradient to x."""
    return tree_map_only(Tensor, Tensor.detach, feats)


def implicit(x: Params, point: Point, s: Tensor | float = 0.0) -> Estimate:
    """ĥ = ∇_x (f − s) in x's names and shapes, detached, from ONE backward through x's
    computation (a backbone's features): ∇_x s = J v gives eq 9. Returns f's value too."""
    grads = unflatten(flat_grad(point.f.sum() - s, point.x.values()), x)
    return {n: p.detach() for n, p in grads.items()}, value(point.f)


def aid(problem: Objective, x: Params, y: Params, batch: Batch,
        solve: Callable[[MatVec, Tensor], Tensor]) -> Estimate:
    """Approximate implicit differentiation: v = solve(H·, ∇_y f) with exact HVPs by double
    backward through one ∇_y g built on the features, then ĥ = ∇_x [f − ⟨∇_y g, v⟩] with v
    fixed, i.e. ∇_x f − J v, in one backward."""
    p = start(Split.of(problem, batch), x, y)
    grad_y_g = flat_grad(p.split.inner(p.feats, p.y), p.y.values(), create_graph=True)
    v = solve(lambda u: flat_grad(grad_y_g, p.y.values(), u, retain_graph=True), p.grad_y_f)
    return implicit(x, p, grad_y_g @ v)


def fd_step(mu: float, point: Tensor, direction_norm: float | Tensor) -> float | Tensor:
    """Finite-difference step μ' = μ · max(‖z‖, 1) / ‖d‖ for perturbing z along d: the
    perturbation μ'd has norm μ · max(‖z‖, 1), relative to the point whatever d's scale."""
    return mu * max(float(point.norm()), 1.0) / direction_norm


def batched(function: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """``function`` on each row, by vmap over the rows only: what the function closes over (the
    features, the other variable) is computed once and unbatched; the same random draws for every
    row."""
    return vmap(function, randomness="same")(rows)


def forward_base(point: Point, opts: Options) -> tuple[Tensor | None, Tensor | None]:
    """The base of every forward difference, evaluated once: g(x, y) with its graph (the base of
    J v's differences of g) and ∇_y g(x, y) (the base of H u's differences of ∇_y g); (None,
    None) for central differences, which need no base."""
    if opts.difference != "forward":
        return None, None
    g = point.split.inner(point.feats, point.y)
    return g, flat_grad(g, point.y.values(), retain_graph=True)


def differences(function: Callable[[Tensor], Tensor], point: Tensor, shifts: Tensor,
                at_point: Tensor | None = None) -> Tensor:
    """Row i, per unit step: (function(z + s_i) − function(z − s_i)) / 2 (central), or
    function(z + s_i) − ``at_point`` with ``at_point`` = function(z) (forward: k evaluations
    instead of 2k); divided by μ_i it is the derivative along s_i / μ_i."""
    if at_point is not None:
        return batched(function, point + shifts) - at_point
    values = batched(function, torch.cat([point + shifts, point - shifts]))
    return (values[:len(shifts)] - values[len(shifts):]) / 2


def fd_hvp(split: Split, feats: Any, y: Params, mu: float,
           grad_at_y: Tensor | None = None) -> MatVec:
    """u ↦ H u ≈ (∇_y g(x, y + μ'u) − ∇_y g(x, y − μ'u)) / 2μ', or, given ``grad_at_y`` =
    ∇_y g(x, y) (:func:`forward_base`), (∇_y g(x, y + μ'u) − ∇_y g(x, y)) / μ': one first-order
    gradient per product instead of two. On the fixed features (see :func:`fixed`)."""
    yf = flatten(leaves(y))
    grad_y = grad(lambda v: split.inner(feats, unflatten(v, y)))

    def hvp(u: Tensor) -> Tensor:
        norm = float(u.norm())
        if norm == 0.0:
            return torch.zeros_like(u)
        step = fd_step(mu, yf, norm)
        return differences(grad_y, yf, (step * u)[None], grad_at_y)[0] / step

    return hvp


def fd_jv_y(split: Split, feats: Any, y: Params, directions: Tensor, weights: Tensor,
            mu: float, at_y: Tensor | None = None) -> Tensor:
    """The scalar s = Σ_i w_i (g(x, y + μ_i d_i) − g(x, y − μ_i d_i)) / 2μ_i (given ``at_y`` =
    g(x, y) from :func:`forward_base`: (g(x, y + μ_i d_i) − g(x, y)) / μ_i) for nonzero rows d_i,
    whose ∇_x is the finite-difference J (Σ_i w_i d_i): the perturbed y's batched by vmap on the
    features (differentiable in x, computed once), so ∇_x s is one backward through x."""
    yf = flatten(leaves(y))
    steps = fd_step(mu, yf, directions.norm(dim=1))
    diffs = differences(lambda v: split.inner(feats, unflatten(v, y)), yf,
                        steps[:, None] * directions, at_y)
    return (weights * diffs / steps).sum()
