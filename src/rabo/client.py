"""Client steps of Algorithm 1 (SPEC §2, steps 3 and 6): arrays in, arrays out.

Both runtimes (the in-process simulator and the Flower ClientApp) call these functions on the
client's extracted submodel x̃_i = x[I_x], ỹ_i = y[I_y]; nothing here knows the full model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .hypergrad import hypergradient
from .problem import BilevelProblem
from .submodel import Params, SubmodelIndex

PHASES = {"inner": 1, "outer": 2}


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs to run its two phases: K, η_y, T, η_x and the estimator with options.

    ``estimator=None`` means x is not tuned (FedAvg): the outer phase is skipped.
    """

    inner_steps: int
    inner_lr: float
    outer_steps: int
    outer_lr: float
    estimator: str | None
    estimator_options: dict[str, Any] = field(default_factory=dict)


def client_rng(seed: int, round: int, client: int, phase: str) -> np.random.Generator:
    """The client's data sampler for one phase of one round: a pure function of its ids, so a
    resumed run or a Flower node draws exactly the same minibatches as the simulator."""
    return np.random.default_rng([seed, round, client, PHASES[phase]])


def _leaf(params: Params) -> Params:
    return {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}


def inner_phase(problem: BilevelProblem, x: Params, y: Params, index: SubmodelIndex,
                client: int, round: int, settings: ClientSettings,
                seed: int) -> tuple[Params, dict[str, float]]:
    """K local steps ỹ^{k+1} = ỹ^k − η_y ∇_y g_i(x̃, ỹ^k; ξ_k) (eq 5); returns Δ^y = ỹ^0 − ỹ^K and
    the mean inner loss over the steps."""
    rng = client_rng(seed, round, client, "inner")
    x = {n: p.detach() for n, p in x.items()}
    y0 = {n: p.detach() for n, p in y.items()}
    yk = _leaf(y0)
    losses = []
    for _ in range(settings.inner_steps):
        batch = problem.restrict(problem.sample(client, "inner", rng), index)
        loss = problem.inner_loss(x, yk, batch)
        grads = torch.autograd.grad(loss, list(yk.values()))
        with torch.no_grad():
            yk = {n: p - settings.inner_lr * g for (n, p), g in zip(yk.items(), grads)}
        yk = _leaf(yk)
        losses.append(float(loss.detach()))
    delta = {n: y0[n] - yk[n].detach() for n in y0}
    return delta, {"inner_loss": float(np.mean(losses)) if losses else float("nan")}


def outer_phase(problem: BilevelProblem, x: Params, y: Params, index: SubmodelIndex,
                client: int, round: int, settings: ClientSettings,
                seed: int) -> tuple[Params, dict[str, float]]:
    """T local outer steps x̃ ← x̃ − η_x ĥ_i from ỹ^{t+1} (eq 7), ĥ_i from the chosen estimator;
    returns Δ^x = x̃^0 − x̃^T and the mean outer loss f_i at the points where ĥ was taken."""
    rng = client_rng(seed, round, client, "outer")
    x0 = {n: p.detach() for n, p in x.items()}
    y = {n: p.detach() for n, p in y.items()}
    xk = dict(x0)
    losses = []
    for _ in range(settings.outer_steps):
        batch = problem.restrict(problem.sample(client, "outer", rng), index)
        with torch.no_grad():
            losses.append(float(problem.outer_loss(xk, y, batch)))
        h = hypergradient(problem, xk, y, batch, settings.estimator, t=round,
                          **settings.estimator_options)
        xk = {n: p - settings.outer_lr * h[n] for n, p in xk.items()}
    delta = {n: x0[n] - xk[n] for n in x0}
    return delta, {"outer_loss": float(np.mean(losses)) if losses else float("nan")}
