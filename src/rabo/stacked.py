"""Clients whose submodels have the same shapes, run as one (docs/algorithm.md §2 client steps,
batched).

G clients' x̃_i, ỹ_i and tasks are stacked on a new leading dimension and the problem's
losses are vmapped over it (:func:`vmap_clients`, :class:`~rabo.problem.Losses`): each loss
is the vector of the G clients' losses, and its derivatives are those of the sum, which keep
the clients apart because their parameters are disjoint. A convolution of G stacked weight
sets becomes one grouped convolution, so ten small submodels cost about one call each layer
instead of ten. The client step itself is the sequential one
(:func:`rabo.client.client_step`), unchanged.

Only estimators that act on each client's block alone batch this way (:data:`BLOCKWISE`): CG's
step sizes, ``fd``'s step lengths and ``fd-dir``'s directions use norms or draws over the whole
vector, so clients run one by one there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .client import ClientSettings, client_step, phase_data
from .problem import BilevelProblem, Losses
from .rounds import Job
from .submodel import Params

BLOCKWISE = (None, "neumann", "first-order")


def can_stack(problem: BilevelProblem, settings: ClientSettings) -> bool:
    """Whether the problem's losses vmap (its ``stackable``) and the estimator is blockwise."""
    return problem.stackable and settings.estimator in BLOCKWISE


def vmap_clients(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` vmapped over the clients' leading dimension. vmap maps tensors only, so the
    None leaves of the arguments and results (a problem without features, the features of a set
    a task's data lack) pass around it unmapped."""
    def mapped(*args: Any) -> Any:
        layout = []

        def tensors_only(*args: Any) -> tuple[Tensor, ...]:
            leaves, tree = tree_flatten(function(*args))
            layout.append((tree, [leaf is None for leaf in leaves]))
            return tuple(leaf for leaf in leaves if leaf is not None)

        dims = tree_map(lambda leaf: None if leaf is None else 0, args)
        results = iter(vmap(tensors_only, in_dims=dims)(*args))
        tree, missing = layout[0]
        return tree_unflatten([None if gap else next(results) for gap in missing], tree)
    return mapped


def stack(trees: Sequence[Any]) -> Any:
    """Stack equal-structure pytrees (params, batches, lists of tasks) leaf by leaf."""
    return tree_map(lambda *leaves: torch.stack(leaves), trees[0], *trees[1:])


def stacked_step(problem: BilevelProblem, phase: str, jobs: Sequence[Job], round: int,
                 settings: ClientSettings, seed: int) -> list[tuple[Params, float]]:
    """One phase for G same-shape clients' jobs at once: each draws its own data from its own
    sampler, then one stacked :func:`client_step`; (Δ_i, loss_i) per client, equal to the
    sequential step's up to float rounding."""
    data = stack([phase_data(problem, phase, job.index, job.client, round, settings, seed)
                  for job in jobs])
    x = stack([job.x for job in jobs])
    y = stack([job.y for job in jobs])
    delta, losses = client_step(Losses(problem, vmap_clients), phase, x, y, data, round,
                                settings)
    losses = torch.as_tensor(losses).expand(len(jobs))
    return [({n: d[i] for n, d in delta.items()}, float(losses[i])) for i in range(len(jobs))]

