"""Hypergradient estimators ĥ ≈ ∇F = ∇_x f − J H⁻¹ ∇_y f (eq 9, docs/algorithm.md §3),
chosen by name from :data:`ESTIMATORS` and called through :func:`hypergradient` (or
:func:`estimate`, with the options as one :class:`EstimatorOptions`). Each file holds its
algorithm: ``neumann.py`` (AID, Neumann series), ``cg.py``, ``fd.py``, ``fd_dir.py``,
``first_order.py``; they share ``finite_diff.py`` (difference products of ``fd`` and
``fd-dir``), ``implicit.py`` (the start point and the implicit step), ``split.py`` (the
losses split at the features), ``flat.py`` (flat vectors) and ``options.py``.

Each takes a :class:`~rabo.problem.Objective` and one :class:`~rabo.Task` holding one batch
of g (``inner``) and one of f (``outer``): g is evaluated only on the first, f only on the
second. A problem's features are computed once per call where it has them (``features`` not
None: see :class:`~rabo.problem.Objective`); otherwise the plain losses run, the same code
with features(x) = x (:class:`~rabo.hypergrad.split.Split`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ..errors import ConfigError, lookup
from ..problem import Batch, Losses, Objective, Task
from ..submodel import Params
from .cg import cg
from .fd import fd
from .fd_dir import fd_dir
from .first_order import first_order
from .implicit import Estimate
from .neumann import neumann
from .options import DIFFERENCES, PERTURB, EstimatorOptions

Estimator = Callable[[Objective, Params, Params, Batch, EstimatorOptions, int], Estimate]
"""(problem, x, y, batch, options, t) → (ĥ, f(x, y)); t is the round (``fd``'s block
cycles with it)."""

ESTIMATORS: dict[str, Estimator] = {
    "neumann": neumann,
    "cg": cg,
    "fd": fd,
    "fd-dir": fd_dir,
    "first-order": first_order,
}


def estimate(problem: Objective, x: Params, y: Params, batch: Batch, estimator: str,
             options: EstimatorOptions, t: int = 0) -> Estimate:
    """(ĥ, f(x, y)) by the named estimator at round ``t``: the hypergradient and the outer
    loss evaluated on the way, which a client logs without computing f again."""
    function = lookup(ESTIMATORS, "estimator", estimator)
    with torch.enable_grad():
        return function(problem, x, y, batch, options, t)


def hypergradient(problem: Objective, x: Params, y: Params, batch: Batch,
                  estimator: str = "neumann", *, terms: int = EstimatorOptions.terms,
                  step: float = EstimatorOptions.step, mu: float = EstimatorOptions.mu,
                  coords: int | None = None, perturb: str = EstimatorOptions.perturb,
                  t: int = 0, difference: str = EstimatorOptions.difference) -> Params:
    """ĥ ≈ ∇F(x) at (x, y) by the named estimator: a detached dict with x's names, shapes
    and dtype. The options are :class:`EstimatorOptions`'s (checked there); ``t`` is the
    round that picks ``fd``'s coordinate block. ``problem`` is a :class:`~rabo.Objective`
    (a loss that is not a scalar is a one-line error) and ``batch`` a :class:`~rabo.Task`."""
    if not isinstance(t, numbers.Integral) or isinstance(t, bool):
        raise ConfigError(f"t={t!r} is not allowed; t must be an integer round number")
    options = EstimatorOptions(terms, step, mu, coords, perturb, difference)
    lookup(ESTIMATORS, "estimator", estimator)
    if not isinstance(problem, Objective):
        raise ConfigError(f"problem is a {type(problem).__name__}, not a rabo.Objective: "
                          f"subclass rabo.Objective (or rabo.BilevelProblem) and define "
                          f"inner_loss and outer_loss")
    if not isinstance(batch, Task):
        raise ConfigError(f"batch is a {type(batch).__name__}, not a rabo.Task: pass "
                          f"rabo.Task((data_of_g,), data_of_f)")
    return estimate(Losses(problem), x, y, batch, estimator, options, int(t))[0]


__all__ = ["DIFFERENCES", "ESTIMATORS", "PERTURB", "Estimate", "Estimator",
           "EstimatorOptions", "estimate", "hypergradient"]
