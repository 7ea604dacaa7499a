"""The user's contract: a bilevel problem as pure functions of parameter dicts (SPEC §1).

    min_x F(x) = 1/M Σ_i f_i(x, y*(x))   s.t.   y*(x) = argmin_y 1/M Σ_i g_i(x, y)

``inner_loss`` is g_i and ``outer_loss`` is f_i; both take dicts of (possibly sliced) tensors,
so the same code runs on a client's submodel and on the full model.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .submodel import ChannelPlan, Params, SubmodelIndex

Batch = Any


@runtime_checkable
class Objective(Protocol):
    """Anything with the two losses: all that :func:`rabo.hypergradient` needs."""

    def inner_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...

    def outer_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...


class BilevelProblem:
    """Base class for problems the engine runs federated.

    A subclass sets ``plan`` (a :class:`ChannelPlan` over the names of x and y, restricted to the
    pruned ones), ``num_clients``, and implements ``init_params``, ``sample``, the two losses and
    ``evaluate``. ``defaults`` holds per-problem run settings (step sizes, inner steps, the
    finite-difference ``difference``: "forward" only where g is smooth in y, …).
    ``stackable``: the losses (and ``features``, ``inner_batch``) run under ``torch.func.vmap``
    over stacked parameters and batches, so same-shape clients can run as one
    (:mod:`rabo.stacked`); a batch is then a pytree of tensors only. ``batch_by_default``:
    whether the simulator stacks them unless the config's ``batch_clients`` says otherwise.
    """

    name: str = "problem"
    plan: ChannelPlan
    num_clients: int
    episodic: bool = False
    stackable: bool = False
    batch_by_default: bool = True
    defaults: ClassVar[dict[str, Any]] = {}
    options: ClassVar[dict[str, Any]] = {}

    def init_params(self, seed: int) -> tuple[Params, Params]:
        """Initial full-size (x⁰, y⁰)."""
        raise NotImplementedError

    def sample(self, client: int, phase: str, rng: np.random.Generator) -> Batch:
        """One minibatch ξ of client ``client``; ``phase`` is "inner" (data of g) or "outer" (of f)."""
        raise NotImplementedError

    def restrict(self, batch: Batch, index: SubmodelIndex) -> Batch:
        """The batch as seen by a submodel: problems whose data are indexed by parameter
        coordinates (the quadratic's matrices) slice them here; data of a network pass through."""
        return batch

    def inner_batch(self, batch: Batch) -> Batch:
        """The part of a batch that g reads (few-shot: the support set), so that the inner
        steps do not compute features of data only f needs."""
        return batch

    def cost_key(self, client: int) -> Hashable:
        """What, besides the submodel's shapes, fixes the cost of a client's step (its batch
        shapes): clients with equal keys share one FLOP count."""
        return client

    def inner_loss(self, x: Params, y: Params, batch: Batch) -> Tensor:
        raise NotImplementedError

    def outer_loss(self, x: Params, y: Params, batch: Batch) -> Tensor:
        raise NotImplementedError

    def round_metrics(self, x: Params, y: Params) -> dict[str, float]:
        """Cheap metrics logged every round (the quadratic's true ‖∇F(x^t)‖)."""
        return {}

    def evaluate(self, x: Params, y: Params, final: bool = False) -> dict[str, float]:
        """Metrics of the global model (accuracy, ``hypergrad_norm``, …) on held-out data;
        ``final`` is True on the run's last round (the driver passes it only to problems
        whose ``evaluate`` takes it)."""
        return {}

    def config(self) -> dict[str, Any]:
        """The problem's resolved options, for config.json."""
        return {}


def split_names(params: Params, x_names: Sequence[str]) -> tuple[Params, Params]:
    """Split one dict into (x, y) by the names of x."""
    xs = set(x_names)
    return ({n: p for n, p in params.items() if n in xs},
            {n: p for n, p in params.items() if n not in xs})


def detach(params: Params) -> Params:
    return {n: p.detach() for n, p in params.items()}


def numel(params: Params) -> int:
    return sum(int(p.numel()) for p in params.values())


def zeros_like(params: Params) -> Params:
    return {n: torch.zeros_like(p) for n, p in params.items()}
