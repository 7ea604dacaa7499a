"""Hypergradient estimators ĥ ≈ ∇F = ∇_x f − J H⁻¹ ∇_y f (eq 9, docs/algorithm.md §3), one
module each, chosen by name from :data:`ESTIMATORS` and called through :func:`hypergradient`.

Each takes a :class:`~rabo.problem.Objective` and one :class:`~rabo.Task` holding one batch
of g (``inner``) and one of f (``outer``): g is evaluated only on the first, f only on the
second.
A problem's features are computed once per call where it has them (``features`` not None: see
:class:`~rabo.problem.Objective`); otherwise the plain losses run, the same code with
features(x) = x (:class:`~rabo.hypergrad._common.Split`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from ..errors import ConfigError, lookup
from ..problem import Batch, Objective
from ..submodel import Params
from ._common import Estimate, Options
from .cg import cg
from .fd import fd
from .fd_dir import fd_dir
from .first_order import first_order
from .neumann import neumann

Estimator = Callable[[Objective, Params, Params, Batch, Options], Estimate]

ESTIMATORS: dict[str, Estimator] = {
    "neumann": neumann,
    "cg": cg,
    "fd": fd,
    "fd-dir": fd_dir,
    "first-order": first_order,
}

PERTURB = ("auto", "x", "y")
DIFFERENCES = ("central", "forward")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed; expected {allowed}")


def _positive(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def hypergradient(problem: Objective, x: Params, y: Params, batch: Batch,
                  estimator: str = "neumann", *, terms: int = 10, step: float = 0.1,
                  mu: float = 1e-3, coords: int | None = None, perturb: str = "auto",
                  t: int = 0, difference: str = "central") -> Params:
    """ĥ ≈ ∇F(x) at (x, y) by the named estimator: a detached dict with x's names, shapes and dtype.
    See :func:`estimate` for the options."""
    return estimate(problem, x, y, batch, estimator, terms=terms, step=step, mu=mu,
                    coords=coords, perturb=perturb, t=t, difference=difference)[0]


def estimate(problem: Objective, x: Params, y: Params, batch: Batch,
             estimator: str = "neumann", *, terms: int = 10, step: float = 0.1,
             mu: float = 1e-3, coords: int | None = None, perturb: str = "auto",
             t: int = 0, difference: str = "central") -> Estimate:
    """(ĥ, f(x, y)): the hypergradient and the outer loss the estimator evaluated on the way, so
    a client logs f without computing it again.

    ``terms`` is Q (Neumann terms / CG iterations), ``step`` the Neumann step η_N (≤ 1/L_g),
    ``mu`` the finite-difference step μ, ``coords`` the size k of the cycling coordinate block of
    ``fd`` (None: all), ``perturb`` which variable ``fd`` differences for J v ("auto": the
    smaller), ``t`` the round that picks the block, ``difference`` the finite-difference scheme of
    ``fd``/``fd-dir`` ("central": two gradients per product, O(μ²) error; "forward": one, against
    the gradient at the point computed once, O(μ) error). Options an estimator does not use are
    ignored.
    """
    function = lookup(ESTIMATORS, "estimator", estimator)
    _check(_is_int(terms) and terms >= 1, "terms", terms, "an integer >= 1")
    _check(_positive(step), "step", step, "a finite number > 0")
    _check(_positive(mu), "mu", mu, "a finite number > 0")
    _check(coords is None or (_is_int(coords) and coords >= 1), "coords", coords,
           "None (all coordinates) or an integer >= 1")
    _check(perturb in PERTURB, "perturb", perturb, "one of " + ", ".join(PERTURB))
    _check(_is_int(t), "t", t, "an integer round number")
    _check(difference in DIFFERENCES, "difference", difference, "one of " + ", ".join(DIFFERENCES))
    opts = Options(int(terms), float(step), float(mu), None if coords is None else int(coords),
                   perturb, int(t), difference)
    with torch.enable_grad():
        return function(problem, x, y, batch, opts)


__all__ = ["DIFFERENCES", "ESTIMATORS", "PERTURB", "Estimate", "Options", "estimate", "hypergradient"]
