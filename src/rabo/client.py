"""Client steps of Algorithm 1 (SPEC §2, steps 3 and 6): arrays in, arrays out.

Both runtimes (the in-process simulator and the Flower ClientApp) call these functions on the
client's extracted submodel x̃_i = x[I_x], ỹ_i = y[I_y]; nothing here knows the full model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .hypergrad import estimate
from .problem import Batch, BilevelProblem
from .submodel import Params, SubmodelIndex

PHASES = {"inner": 1, "outer": 2}


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs for its two phases: K, η_y, T, η_x, the estimator and its options,
    and (episodic problems) the per-task head adaptation steps before the hypergradient.

    ``estimator=None`` means x is not tuned (FedAvg): the outer phase is skipped.
    """

    inner_steps: int
    inner_lr: float
    outer_steps: int
    outer_lr: float
    estimator: str | None
    estimator_options: dict[str, Any] = field(default_factory=dict)
    adapt_steps: int = 0


def client_rng(seed: int, round: int, client: int, phase: str) -> np.random.Generator:
    """The client's data sampler for one phase of one round: a pure function of its ids, so a
    resumed run or a Flower node draws exactly the same minibatches as the simulator."""
    return np.random.default_rng([seed, round, client, PHASES[phase]])


def inner_objective(problem: BilevelProblem, x: Params, batch: Batch) -> Callable[[Params], Tensor]:
    """y ↦ g(x, y; batch) for fixed x; x-only features (a backbone's) are computed once."""
    batch = problem.inner_batch(batch)
    if hasattr(problem, "features"):
        with torch.no_grad():
            feats = problem.features(x, batch)
        return lambda y: problem.inner_loss_from(feats, y, batch)
    return lambda y: problem.inner_loss(x, y, batch)


def descend(problem: BilevelProblem, x: Params, y: Params, batches: Sequence[Batch],
            lr: float) -> tuple[Params, list[float]]:
    """One gradient step on y per batch: ỹ^{k+1} = ỹ^k − η ∇_y g(x̃, ỹ^k; ξ_k) (eq 5). An empty
    y (ProtoNet, MAML: everything learned is x) has nothing to descend: a no-op."""
    y = {n: p.detach() for n, p in y.items()}
    if not y:
        return y, []
    losses, objective, last = [], None, None
    for batch in batches:
        if batch is not last:
            objective, last = inner_objective(problem, x, batch), batch
        leaves = {n: p.requires_grad_(True) for n, p in ((n, p.clone()) for n, p in y.items())}
        loss = objective(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        y = {n: (p - lr * g).detach() for (n, p), g in zip(leaves.items(), grads)}
        losses.append(float(loss.detach()))
    return y, losses


def inner_phase(problem: BilevelProblem, x: Params, y: Params, index: SubmodelIndex,
                client: int, round: int, settings: ClientSettings,
                seed: int) -> tuple[Params, dict[str, float]]:
    """K local steps on ỹ (eq 5); returns Δ^y = ỹ^0 − ỹ^K and the mean inner loss.

    Episodic problems: every task of the client's meta-batch adapts K steps from ỹ_i on its
    own support set, and Δ^y is the mean over tasks."""
    rng = client_rng(seed, round, client, "inner")
    x = {n: p.detach() for n, p in x.items()}
    y0 = {n: p.detach() for n, p in y.items()}
    K = settings.inner_steps
    if problem.episodic:
        tasks = problem.restrict(problem.sample(client, "inner", rng), index)
        runs = [descend(problem, x, y0, [task] * K, settings.inner_lr) for task in tasks]
    else:
        batches = [problem.restrict(problem.sample(client, "inner", rng), index) for _ in range(K)]
        runs = [descend(problem, x, y0, batches, settings.inner_lr)]
    delta = {n: y0[n] - torch.stack([yk[n] for yk, _ in runs]).mean(0) for n in y0}
    losses = [l for _, ls in runs for l in ls]
    return delta, {"inner_loss": float(np.mean(losses)) if losses else float("nan")}


def outer_phase(problem: BilevelProblem, x: Params, y: Params, index: SubmodelIndex,
                client: int, round: int, settings: ClientSettings,
                seed: int) -> tuple[Params, dict[str, float]]:
    """T local outer steps x̃ ← x̃ − η_x ĥ_i at ỹ^{t+1} (eq 7); returns Δ^x = x̃^0 − x̃^T and the
    mean outer loss f_i where ĥ was taken. Episodic: each task first adapts its head
    ``adapt_steps`` steps from ỹ^{t+1} on its support set, and ĥ_i is the mean over tasks."""
    rng = client_rng(seed, round, client, "outer")
    x0 = {n: p.detach() for n, p in x.items()}
    y = {n: p.detach() for n, p in y.items()}
    xk, losses = dict(x0), []
    for _ in range(settings.outer_steps):
        batch = problem.restrict(problem.sample(client, "outer", rng), index)
        tasks = batch if problem.episodic else [batch]
        grads = []
        for task in tasks:
            yt = descend(problem, xk, y, [task] * settings.adapt_steps, settings.inner_lr)[0] \
                if problem.episodic else y
            h, f = estimate(problem, xk, yt, task, settings.estimator, t=round,
                            **settings.estimator_options)
            grads.append(h)
            losses.append(f)
        xk = {n: p - settings.outer_lr * torch.stack([g[n] for g in grads]).mean(0)
              for n, p in xk.items()}
    delta = {n: x0[n] - xk[n] for n in x0}
    return delta, {"outer_loss": float(np.mean(losses)) if losses else float("nan")}
