"""The user's contract: a bilevel problem as pure functions of parameter dicts
(docs/algorithm.md §1).

    min_x F(x) = 1/M Σ_i f_i(x, y*(x))   s.t.   y*(x) = argmin_y 1/M Σ_i g_i(x, y)

``inner_loss`` is g_i and ``outer_loss`` is f_i; both take dicts of (possibly sliced) tensors,
so the same code runs on a client's submodel and on the full model.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .submodel import ChannelPlan, Params, SubmodelIndex


@dataclass(frozen=True)
class Bound:
    """The documented range of a numeric problem option: ``low ≤ v ≤ high`` (``low < v``
    where ``above``), NaN never."""

    low: float
    high: float = math.inf
    above: bool = False

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"problem.{key}={value!r} is not a number")
        ok = (self.low < value if self.above else self.low <= value) and value <= self.high
        if not ok:
            allowed = f"{'>' if self.above else '≥'} {self.low:g}"
            if math.isfinite(self.high):
                allowed += f" and ≤ {self.high:g}"
            raise ConfigError(f"problem.{key}={value!r} is not allowed; it must be {allowed}")


def check_ranges(ranges: Mapping[str, Bound], options: Mapping[str, Any]) -> None:
    """Check the numeric ``options`` a config gives against the problem's ``ranges``, before
    any data is read or memory allocated."""
    for key, value in options.items():
        if key in ranges:
            ranges[key].check(key, value)

Batch = Any


@runtime_checkable
class Objective(Protocol):
    """Anything with the two losses: all that :func:`rabo.hypergradient` needs."""

    def inner_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...

    def outer_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...


class BilevelProblem:
    """Base class for problems the engine runs federated; subclass it for a problem of yours
    and run it with ``rabo run FILE.py:Class`` (or ``package.module:Class``), a config file's
    ``problem = "FILE.py:Class"``, or ``rabo.build(config, problem)`` with an instance.

    Constructor (what ``rabo run`` and the Flower apps call):
    ``Class(clients, seed, data_dir, **options)``, with ``options`` the keys of ``options``
    (class attribute: name → default; ``--set problem.KEY=VALUE`` sets one). It must set

    - ``num_clients`` = ``clients`` (client ids are 0 … clients − 1; checked before a run);
    - ``plan``: a :class:`ChannelPlan` over the names of x and y it prunes, restricted to them
      (``ChannelPlan({})`` prunes nothing).

    Methods, each a pure function of parameter dicts (name → tensor):

    - ``init_params(seed) -> (x, y)``: two dicts of full-size initial tensors (checked);
    - ``sample(client, phase, rng) -> batch``: one minibatch ξ of ``client``, ``phase`` "inner"
      (data of g) or "outer" (of f), drawn with the NumPy Generator ``rng``; any object the
      losses read (a pytree of tensors only if ``stackable``);
    - ``inner_loss(x, y, batch)`` (g_i) and ``outer_loss(x, y, batch)`` (f_i) -> a scalar
      tensor, differentiable in x and y, on submodels (sliced dicts) as on the full model;
    - ``evaluate(x, y) -> dict[str, float]`` (optional): metrics of the global model, e.g.
      ``accuracy``, logged every ``eval_every`` rounds;
    - ``config() -> dict`` (optional): the resolved options, JSON-serialisable, for config.json.

    Class attributes: ``name`` (runs/NAME-METHOD-seedS, labels), ``options`` and ``defaults``:
    per-problem run settings, used where the config leaves them unset (``rounds``,
    ``inner_steps``, ``inner_lr``, ``outer_steps``, ``outer_lr``, ``terms``, ``step``, ``mu``,
    ``eval_every``: one unset in both is an error; the finite-difference ``difference``:
    "forward" only where g is smooth in y, else "central"). ``stackable``: the losses (and
    ``features``, ``inner_batch``) run under ``torch.func.vmap`` over stacked parameters and batches, so
    same-shape clients can run as one (:mod:`rabo.stacked`). ``batch_by_default``: whether the
    simulator stacks them unless the config's ``batch_clients`` says otherwise. A broken
    contract that can be seen before the first round (constructor arguments, client count,
    plan, ``init_params``) is a one-line error naming the class.
    """

    name: str = "problem"
    plan: ChannelPlan
    num_clients: int
    episodic: bool = False
    stackable: bool = False
    batch_by_default: bool = True
    defaults: ClassVar[dict[str, Any]] = {}
    options: ClassVar[dict[str, Any]] = {}
    ranges: ClassVar[dict[str, Bound]] = {}

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
