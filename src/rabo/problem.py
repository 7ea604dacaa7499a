"""The user's contract: a bilevel problem as pure functions of parameter dicts
(docs/algorithm.md §1).

    min_x F(x) = 1/M Σ_i f_i(x, y*(x))   s.t.   y*(x) = argmin_y 1/M Σ_i g_i(x, y)

``inner_loss`` is g_i and ``outer_loss`` is f_i; both take dicts of (possibly sliced) tensors,
so the same code runs on a client's submodel and on the full model, and each reads only its own
data: a :class:`Task` names what g reads and what f reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn
from torch.utils._pytree import register_pytree_node

from .errors import ConfigError
from .submodel import Axis, ChannelPlan, Params, SubmodelIndex


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
"""What one loss reads: any object (a pytree of tensors where the problem is ``stackable``)."""


@dataclass(frozen=True)
class Task:
    """One task's data, split by the loss that reads it (docs/algorithm.md §1): ``inner`` the
    batches of g, ``outer`` the batch of f. The client steps and the estimators evaluate g
    only on ``inner`` and f only on ``outer``, so g never reads f's data by accident.

    ``inner`` holds one batch per step of a chain of steps on y (step k reads ``inner[k]``: a
    non-episodic problem's K minibatches) or one batch that every step reuses (a few-shot
    task's support set: its features are computed once for all the steps). ``outer`` is None
    where f is not evaluated (the inner phase)."""

    inner: tuple[Batch, ...]
    outer: Batch | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.inner, tuple) or not self.inner:
            raise ConfigError(f"Task.inner must be a non-empty tuple of g's batches (one per "
                              f"step, or one for every step), not {type(self.inner).__name__}")

    def inner_index(self, step: int) -> int:
        """Which batch of g step ``step`` reads: its own, or the one every step reuses."""
        return step if len(self.inner) > 1 else 0

    def map(self, function: Callable[[Batch], Batch]) -> Task:
        """The task with ``function`` applied to each of its batches (a submodel's view)."""
        return Task(tuple(function(b) for b in self.inner),
                    None if self.outer is None else function(self.outer))


# A pytree node whose leaves are its batches' (a missing f batch has none), so tasks move to a
# device and stack leaf by leaf.
register_pytree_node(Task, lambda t: ([t.inner] if t.outer is None else [t.inner, t.outer], None),
                     lambda children, _: Task(*children))


class Objective:
    """The two losses of a bilevel problem and their optional split at an x-only part: all
    that :func:`rabo.hypergradient` needs (:class:`BilevelProblem` adds the federated parts).

    ``inner_loss(x, y, data)`` (g) and ``outer_loss(x, y, data)`` (f) return a scalar tensor,
    differentiable in x and y; x and y are dicts of (possibly sliced) tensors, ``data`` what
    that loss reads: a :class:`Task`'s ``inner`` batch for g, its ``outer`` batch for f.

    Features computed once (docs/algorithm.md §3): a problem whose losses start with an x-only
    computation on their data (a backbone's features) returns it from ``features(x, data)``
    and states the losses on it: ``inner_loss_from(features(x, d), y, d) == inner_loss(x, y,
    d)``, and the same for ``outer_loss_from``. ``features`` must be differentiable in x (any
    pytree of tensors). Each estimator then computes the features of g's data and of f's data
    once per call, inside what measures the call (FLOPs, §6): ∇_y g, ∇_y f, the Hessian-vector
    products and the perturbed y's of ``fd``/``fd-dir`` run on them, and ĥ is one backward
    through them into x; the inner steps compute them once per batch of g. ``features``
    returning None (the default) means no split: the plain losses are used, as ``fd`` also
    does where it differences x (whose perturbations change the features).
    """

    def inner_loss(self, x: Params, y: Params, data: Batch) -> Tensor:
        """g(x, y; data), a scalar tensor."""
        raise NotImplementedError

    def outer_loss(self, x: Params, y: Params, data: Batch) -> Tensor:
        """f(x, y; data), a scalar tensor."""
        raise NotImplementedError

    def features(self, x: Params, data: Batch) -> Any:
        """The x-only part of the loss that reads ``data``; None (the default): no split."""
        return None

    def inner_loss_from(self, feats: Any, y: Params, data: Batch) -> Tensor:
        """g on ``feats`` = ``features(x, data)``; called only where those are not None."""
        raise ConfigError(f"problem class {type(self).__name__!r}: its features() returned "
                          f"features, so it must define inner_loss_from(feats, y, data)")

    def outer_loss_from(self, feats: Any, y: Params, data: Batch) -> Tensor:
        """f on ``feats`` = ``features(x, data)``; called only where those are not None."""
        raise ConfigError(f"problem class {type(self).__name__!r}: its features() returned "
                          f"features, so it must define outer_loss_from(feats, y, data)")


@dataclass(frozen=True)
class PlanModel:
    """A torch model whose parameters the problem's plan prunes, for the check at build
    (:func:`rabo.check_plan`): the plan names its tensors ``prefix`` + the model's
    ``named_parameters()`` names; ``example_inputs`` is a small input batch (not all zeros: a
    constant input hides channels behind BatchNorm); ``output`` is the group the model's output
    features follow (a backbone feeding a pruned head), None where they stay full (class
    logits)."""

    module: nn.Module
    example_inputs: Tensor | tuple[Tensor, ...]
    prefix: str = ""
    output: Axis | None = None


class BilevelProblem(Objective):
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
    - ``sample(client, phase, rng, steps) -> list[Task]``: the client's data, drawn with the
      NumPy Generator ``rng``; see :meth:`sample`;
    - the losses of :class:`Objective`: ``inner_loss`` (g_i) and ``outer_loss`` (f_i), each a
      scalar tensor on the data it reads, on submodels (sliced dicts) as on the full model
      (a loss that is not a scalar is a one-line error naming the class and the method), and
      optionally ``features`` / ``inner_loss_from`` / ``outer_loss_from`` (features computed
      once; ``features`` returns None by default: no split);
    - ``evaluate(x, y, final) -> dict[str, float]``: metrics of the global model, e.g.
      ``accuracy``, logged every ``eval_every`` rounds (``final``: the run's last round);
    - ``config() -> dict``: the resolved options, JSON-serialisable, for config.json;
    - ``plan_models() -> [PlanModel]``: the torch models ``plan`` prunes, each with an example
      input, so that building a run checks the plan on random submodels (a wrong plan is a
      one-line :class:`~rabo.errors.PlanError` naming tensor and group); none by default.

    Class attributes: ``name`` (runs/NAME-METHOD-seedS, labels), ``options`` and ``defaults``:
    per-problem run settings, used where the config leaves them unset (``rounds``,
    ``inner_steps``, ``inner_lr``, ``outer_steps``, ``outer_lr``, ``terms``, ``step``, ``mu``,
    ``eval_every``: one unset in both is an error; the finite-difference ``difference``:
    "forward" only where g is smooth in y, else "central"). ``stackable``: the losses and
    ``features`` run under ``torch.func.vmap`` over stacked parameters and batches, so
    same-shape clients can run as one (:mod:`rabo.stacked`). ``batch_by_default``: whether the
    simulator stacks them unless the config's ``batch_clients`` says otherwise. A broken
    contract that can be seen before the first round (constructor arguments, client count,
    plan, ``init_params``) is a one-line error naming the class.
    """

    name: str = "problem"
    plan: ChannelPlan
    num_clients: int
    stackable: bool = False
    batch_by_default: bool = True
    defaults: ClassVar[dict[str, Any]] = {}
    options: ClassVar[dict[str, Any]] = {}
    ranges: ClassVar[dict[str, Bound]] = {}

    def init_params(self, seed: int) -> tuple[Params, Params]:
        """Initial full-size (x⁰, y⁰)."""
        raise NotImplementedError

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[Task]:
        """The tasks of client ``client`` for ``steps`` steps of ``phase`` (one batch contract:
        each :class:`Task` names what g reads, ``inner``, and what f reads, ``outer``).

        ``phase`` "inner": the K = ``steps`` local steps on y (eq 5); each task runs its own K
        steps from ỹ_i and Δ^y is the mean over the tasks. A non-episodic problem returns one
        task holding K minibatches of g (``Task(tuple of K batches)``); an episodic one, its
        meta-batch of tasks, each holding one batch that all K steps reuse. ``outer`` may be
        None. ``phase`` "outer": the tasks of one outer step (``steps`` = 1; the client draws T
        times), each with one batch of g (the hypergradient's, and its ``adapt_steps`` head
        steps') and the batch of f; ĥ_i is the mean over the tasks. Never put f's data in
        ``inner``: the estimators evaluate g on it."""
        raise NotImplementedError

    def restrict(self, batch: Batch, index: SubmodelIndex) -> Batch:
        """The batch as seen by a submodel: problems whose data are indexed by parameter
        coordinates (the quadratic's matrices) slice them here; data of a network pass through."""
        return batch

    def cost_key(self, client: int) -> Hashable:
        """What, besides the submodel's shapes, fixes the cost of a client's step (its batch
        shapes): clients with equal keys share one FLOP count."""
        return client

    def round_metrics(self, x: Params, y: Params) -> dict[str, float]:
        """Cheap metrics logged every round (the quadratic's true ‖∇F(x^t)‖)."""
        return {}

    def evaluate(self, x: Params, y: Params, final: bool) -> dict[str, float]:
        """Metrics of the global model (accuracy, ``hypergrad_norm``, …) on held-out data;
        ``final`` is True on the run's last round (where few-shot evaluates more episodes)."""
        return {}

    def config(self) -> dict[str, Any]:
        """The problem's resolved options, for config.json."""
        return {}

    def plan_models(self) -> Sequence[PlanModel]:
        """The torch models whose parameters :attr:`plan` prunes (:class:`PlanModel`), checked
        when a run is built; none by default (nothing is checked)."""
        return ()


class Losses(Objective):
    """A problem's features and losses as the client steps call them: each loss checked to
    return a scalar per client (else a one-line error naming the problem's class and the
    method), all mapped by ``over``: as they are, or :func:`torch.func.vmap` for G same-shape
    clients stacked on a leading dimension (:mod:`rabo.stacked`), whose losses are then the G
    per-client values."""

    def __init__(self, problem: Objective,
                 over: Callable[[Callable], Callable] = lambda function: function):
        name = type(problem).__name__
        self.inner_loss = over(scalar(name, "inner_loss", problem.inner_loss))
        self.outer_loss = over(scalar(name, "outer_loss", problem.outer_loss))
        self.inner_loss_from = over(scalar(name, "inner_loss_from", problem.inner_loss_from))
        self.outer_loss_from = over(scalar(name, "outer_loss_from", problem.outer_loss_from))
        self.features = over(problem.features)


def scalar(problem: str, method: str, loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``loss``, checked to return a scalar tensor (per client, under vmap)."""
    def checked(*args: Any) -> Tensor:
        value = loss(*args)
        if not isinstance(value, Tensor) or value.dim() != 0:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) \
                else type(value).__name__
            raise ConfigError(f"problem class {problem!r}: {method} returned {got}, not a "
                              f"scalar tensor (reduce per-example losses, e.g. with .mean())")
        return value
    return checked


def numel(params: Params) -> int:
    return sum(int(p.numel()) for p in params.values())
