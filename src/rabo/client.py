"""Client steps of Algorithm 1 (docs/algorithm.md §2, steps 3 and 6): arrays in, arrays out.

Both runtimes (the in-process simulator and the Flower ClientApp) call these functions on the
client's extracted submodel x̃_i = x[I_x], ỹ_i = y[I_y]; nothing here knows the full model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map_only

from .errors import ConfigError
from .hypergrad import EstimatorOptions, estimate
from .problem import Batch, BilevelProblem, Losses, Objective, Task
from .streams import client_rng
from .submodel import Params, SubmodelIndex


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs for its two phases: K, η_y, T, η_x, the estimator and its options,
    and the steps on y each task adapts before its hypergradient (few-shot: the head's).

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


def inner_objective(problem: Objective, x: Params, data: Batch) -> Callable[[Params], Tensor]:
    """y ↦ g(x, y; data) for fixed x; the x-only features of ``data`` (a backbone's) computed
    once, where the problem has them."""
    with torch.no_grad():
        feats = problem.features(x, data)
    if feats is None:
        return lambda y: problem.inner_loss(x, y, data)
    return lambda y: problem.inner_loss_from(feats, y, data)


def descend(problem: Objective, x: Params, y: Params, task: Task, steps: int,
            lr: float) -> tuple[Params, list[Tensor]]:
    """``steps`` gradient steps ỹ^{k+1} = ỹ^k − η ∇_y g(x̃, ỹ^k; ξ_k) (eq 5), ξ_k the task's
    batch of g :meth:`~rabo.Task.inner_index` (the step's own, or the one all steps reuse),
    whose features are computed once. An empty y (ProtoNet, MAML: everything learned is x) has
    nothing to descend: a no-op."""
    y = {n: p.detach() for n, p in y.items()}
    if not y:
        return y, []
    losses, objective, current = [], None, None
    for k in range(steps):
        if task.inner_index(k) != current:  # a batch of g not read before
            current = task.inner_index(k)
            objective = inner_objective(problem, x, task.inner[current])
        leaves = {n: p.requires_grad_(True) for n, p in ((n, p.clone()) for n, p in y.items())}
        loss = objective(leaves)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        y = {n: (p - lr * g).detach() for (n, p), g in zip(leaves.items(), grads)}
        losses.append(loss.detach())
    return y, losses


def phase_data(problem: BilevelProblem, phase: str, index: SubmodelIndex, client: int,
               round: int, settings: ClientSettings, seed: int) -> list[list[Task]]:
    """The client's tasks for one phase as its submodel sees them, drawn from its own sampler:
    the inner phase's one draw (tasks for K steps), the outer phase's T draws (one step's tasks
    each)."""
    rng = client_rng(seed, round, client, phase)
    steps, draws = (settings.inner_steps, 1) if phase == "inner" else (1, settings.outer_steps)
    data = []
    for _ in range(draws):
        tasks = checked_tasks(problem, phase, steps, problem.sample(client, phase, rng, steps))
        data.append([task.map(lambda batch: problem.restrict(batch, index)) for task in tasks])
    return to_device(data, settings.device)


def checked_tasks(problem: BilevelProblem, phase: str, steps: int, tasks: Any) -> list[Task]:
    """``sample``'s tasks, checked against its contract (:meth:`BilevelProblem.sample`): a
    broken one is a one-line error naming the problem's class."""
    call = f"problem class {type(problem).__name__!r}: sample(client, {phase!r}, rng, {steps})"
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, Task) for t in tasks)):
        raise ConfigError(f"{call} returned {type(tasks).__name__}, not a non-empty list of "
                          f"rabo.Task")
    for task in tasks:
        if len(task.inner) not in (1, steps):
            raise ConfigError(f"{call} returned a task with {len(task.inner)} batches of g; a "
                              f"task holds one per step ({steps}) or one that every step "
                              f"reuses")
        if phase == "outer" and task.outer is None:
            raise ConfigError(f"{call} returned a task without f's data (Task.outer is None)")
    return tasks


def to_device(tree: Any, device: str) -> Any:
    """Every tensor of a pytree (params, batches) on ``device``; a no-op where it is already."""
    return tree_map_only(Tensor, lambda t: t.to(device), tree)


def inner_update(problem: Objective, x: Params, y: Params, data: list[list[Task]],
                 settings: ClientSettings) -> tuple[Params, Tensor]:
    """K local steps on ỹ (eq 5): every task adapts K steps from ỹ_i on its batches of g, and
    Δ^y = ỹ^0 − ỹ^K is the mean over the tasks (a non-episodic problem has one); returns Δ^y
    and the mean inner loss."""
    x = {n: p.detach() for n, p in x.items()}
    y0 = {n: p.detach() for n, p in y.items()}
    runs = [descend(problem, x, y0, task, settings.inner_steps, settings.inner_lr)
            for tasks in data for task in tasks]
    delta = {n: y0[n] - torch.stack([yk[n] for yk, _ in runs]).mean(0) for n in y0}
    return delta, _mean([v for _, values in runs for v in values])


def outer_update(problem: Objective, x: Params, y: Params, data: list[list[Task]], round: int,
                 settings: ClientSettings) -> tuple[Params, Tensor]:
    """T local outer steps x̃ ← x̃ − η_x ĥ_i at ỹ^{t+1} (eq 7), one per draw of ``data``: each
    task first adapts y ``adapt_steps`` steps from ỹ^{t+1} on its batch of g (few-shot: its
    head on the support set), and ĥ_i is the mean over the tasks. Returns Δ^x = x̃^0 − x̃^T and
    the mean outer loss f_i where ĥ was taken."""
    x0 = {n: p.detach() for n, p in x.items()}
    y = {n: p.detach() for n, p in y.items()}
    xk, losses = dict(x0), []
    for tasks in data:
        grads = []
        for task in tasks:
            yt = descend(problem, xk, y, task, settings.adapt_steps, settings.inner_lr)[0]
            h, f = estimate(problem, xk, yt, task, settings.estimator,
                            settings.estimator_options, round)
            grads.append(h)
            losses.append(f)
        xk = {n: p - settings.outer_lr * torch.stack([g[n] for g in grads]).mean(0)
              for n, p in xk.items()}
    return {n: x0[n] - xk[n] for n in x0}, _mean(losses)


def client_step(problem: Objective, phase: str, x: Params, y: Params, data: list[list[Task]],
                round: int, settings: ClientSettings) -> tuple[Params, Tensor]:
    """The phase's update on already drawn data, on the settings' device: (Δ on the CPU, mean
    loss). ``problem``: the problem's :class:`~rabo.problem.Losses` (vmapped for stacked
    clients)."""
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
    delta, loss = client_step(Losses(problem), phase, x, y, data, round, settings)
    return delta, float(loss)


def _mean(values: list[float | Tensor]) -> Tensor:
    """The mean of per-step losses (scalars, or per-client vectors of a stacked problem); NaN
    where there were none."""
    if not values:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).mean(0)
