"""Client steps of Algorithm 1 (docs/algorithm.md §2, steps 3 and 6): arrays in, arrays out.

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
from torch.utils._pytree import tree_map_only

from .hypergrad import EstimatorOptions, estimate
from .problem import Batch, BilevelProblem
from .submodel import Params, SubmodelIndex

PHASES = {"inner": 1, "outer": 2}


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs for its two phases: K, η_y, T, η_x, the estimator and its options,
    and (episodic problems) the per-task head adaptation steps before the hypergradient.

    ``estimator=None`` means x is not tuned (FedAvg): the outer phase is skipped. ``device``:
    where the client computes (its submodel and data are moved there, Δ comes back to the CPU).
    """

    inner_steps: int
    inner_lr: float
    outer_steps: int
    outer_lr: float
    estimator: str | None
    estimator_options: EstimatorOptions = field(default_factory=EstimatorOptions)
    adapt_steps: int = 0
    device: str = "cpu"


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
            lr: float) -> tuple[Params, list[Tensor]]:
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
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        y = {n: (p - lr * g).detach() for (n, p), g in zip(leaves.items(), grads)}
        losses.append(loss.detach())
    return y, losses


def phase_data(problem: BilevelProblem, phase: str, index: SubmodelIndex, client: int,
               round: int, settings: ClientSettings, seed: int) -> list[Any]:
    """The client's data for one phase as its submodel sees them, drawn from its own sampler:
    the inner phase's K minibatches (episodic: its meta-batch of tasks), the outer phase's T
    minibatches (episodic: T meta-batches)."""
    rng = client_rng(seed, round, client, phase)
    if phase == "inner" and problem.episodic:
        data = problem.restrict(problem.sample(client, "inner", rng), index)
    else:
        count = settings.inner_steps if phase == "inner" else settings.outer_steps
        data = [problem.restrict(problem.sample(client, phase, rng), index) for _ in range(count)]
    return to_device(data, settings.device)


def to_device(tree: Any, device: str) -> Any:
    """Every tensor of a pytree (params, batches) on ``device``; a no-op where it is already."""
    return tree_map_only(Tensor, lambda t: t.to(device), tree)


def inner_update(problem: BilevelProblem, x: Params, y: Params, data: list[Any],
                 settings: ClientSettings) -> tuple[Params, Tensor]:
    """K local steps on ỹ (eq 5) over ``data``; returns Δ^y = ỹ^0 − ỹ^K and the mean inner loss.

    Episodic problems: every task of the meta-batch adapts K steps from ỹ_i on its own support
    set, and Δ^y is the mean over tasks."""
    x = {n: p.detach() for n, p in x.items()}
    y0 = {n: p.detach() for n, p in y.items()}
    K = settings.inner_steps
    runs = [descend(problem, x, y0, [task] * K, settings.inner_lr) for task in data] \
        if problem.episodic else [descend(problem, x, y0, data, settings.inner_lr)]
    delta = {n: y0[n] - torch.stack([yk[n] for yk, _ in runs]).mean(0) for n in y0}
    return delta, _mean([v for _, values in runs for v in values])


def outer_update(problem: BilevelProblem, x: Params, y: Params, data: list[Any], round: int,
                 settings: ClientSettings) -> tuple[Params, Tensor]:
    """T local outer steps x̃ ← x̃ − η_x ĥ_i at ỹ^{t+1} (eq 7), one per minibatch of ``data``;
    returns Δ^x = x̃^0 − x̃^T and the mean outer loss f_i where ĥ was taken. Episodic: each task
    first adapts its head ``adapt_steps`` steps from ỹ^{t+1} on its support set, and ĥ_i is the
    mean over tasks."""
    x0 = {n: p.detach() for n, p in x.items()}
    y = {n: p.detach() for n, p in y.items()}
    xk, losses = dict(x0), []
    for batch in data:
        grads = []
        for task in (batch if problem.episodic else [batch]):
            yt = descend(problem, xk, y, [task] * settings.adapt_steps, settings.inner_lr)[0] \
                if problem.episodic else y
            h, f = estimate(problem, xk, yt, task, settings.estimator,
                            settings.estimator_options, round)
            grads.append(h)
            losses.append(f)
        xk = {n: p - settings.outer_lr * torch.stack([g[n] for g in grads]).mean(0)
              for n, p in xk.items()}
    return {n: x0[n] - xk[n] for n in x0}, _mean(losses)


def client_step(problem: BilevelProblem, phase: str, x: Params, y: Params, data: list[Any],
                round: int, settings: ClientSettings) -> tuple[Params, Tensor]:
    """The phase's update on already drawn data, on the settings' device: (Δ on the CPU, mean
    loss)."""
    x, y = to_device(x, settings.device), to_device(y, settings.device)
    delta, loss = inner_update(problem, x, y, data, settings) if phase == "inner" \
        else outer_update(problem, x, y, data, round, settings)
    return to_device(delta, "cpu"), loss.cpu()


def client_phase(problem: BilevelProblem, phase: str, x: Params, y: Params,
                 index: SubmodelIndex, client: int, round: int, settings: ClientSettings,
                 seed: int) -> tuple[Params, float]:
    """Step 3 ("inner") or 6 ("outer") of Algorithm 1 for one client: its own data
    (:func:`phase_data`), then :func:`client_step`; returns (Δ, mean loss)."""
    data = phase_data(problem, phase, index, client, round, settings, seed)
    delta, loss = client_step(problem, phase, x, y, data, round, settings)
    return delta, float(loss)


def _mean(values: list[float | Tensor]) -> Tensor:
    """The mean of per-step losses (scalars, or per-client vectors of a stacked problem); NaN
    where there were none."""
    if not values:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).mean(0)
