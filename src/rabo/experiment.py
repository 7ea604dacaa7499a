"""From a config to the objects a runtime needs: problem, mask policy, capacity schedule and
client settings. Both runtimes build their experiment here, so they run the same thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .capacity import CapacitySchedule, read_trace
from .client import ClientSettings
from .config import RunConfig, resolve
from .errors import ConfigError, lookup
from .hypergrad import ESTIMATORS, EstimatorOptions
from .masks import MaskPolicy, make_policy
from .models import check_plan
from .problem import BilevelProblem, PlanModel, check_ranges
from .problems import get_problem, reference
from .submodel import ChannelPlan, Params


@dataclass
class Experiment:
    config: RunConfig            # fully resolved
    problem: BilevelProblem
    policy: MaskPolicy
    schedule: CapacitySchedule
    settings: ClientSettings

    @property
    def tunes_x(self) -> bool:
        return self.settings.estimator is not None


def build(config: RunConfig, problem: BilevelProblem | None = None) -> Experiment:
    """Resolve ``config`` and build what a runtime needs. ``problem``: a user's own problem
    object (its class's ``defaults`` fill the config); otherwise ``config.problem``, a built-in
    name or a reference to a user's class (:func:`~rabo.problems.get_problem`), built with the
    config's clients, seed, data_dir and problem options. ``config`` is left as it is; the
    experiment's holds what the problem resolved its options to (its ``config()``)."""
    problem_cls = _problem_class(config, problem)
    name = reference(config.problem) if problem is None else problem.name
    cfg = resolve(dataclasses.replace(config, problem=name, data_dir=_text(config.data_dir),
                                      capacity_trace=_text(config.capacity_trace)),
                  problem_cls.defaults, f"problem class {problem_cls.__name__!r}")
    options = EstimatorOptions(cfg.terms, cfg.step, cfg.mu, cfg.coords, cfg.perturb,
                               cfg.difference)
    if cfg.estimator is not None:
        lookup(ESTIMATORS, "estimator", cfg.estimator)
    policy = make_policy(cfg.policy, **cfg.policy_options)
    if problem is None:
        problem = construct(problem_cls, cfg)
    _, y = check_problem(problem, cfg)
    check_plans(problem, cfg)
    cfg = dataclasses.replace(cfg, problem_options=problem.config())
    if cfg.estimator not in (None, "first-order") and not y:
        raise ConfigError(f"estimator {cfg.estimator!r} needs an inner variable y, which problem "
                          f"{problem.name!r} with these options has none of; use first-order")
    cfg, schedule = _schedule(cfg)
    return Experiment(cfg, problem, policy, schedule, _client_settings(cfg, options))


def _problem_class(config: RunConfig, problem: BilevelProblem | None) -> type[BilevelProblem]:
    """The class of the run's problem: that of the object given, or the one ``config.problem``
    names with ``config``'s problem options checked against its ``options`` and ``ranges``."""
    if problem is not None:
        if not isinstance(problem, BilevelProblem):
            raise ConfigError(f"build(config, problem): problem is a {type(problem).__name__}, "
                              f"not a rabo.BilevelProblem; pass an instance of a subclass of "
                              f"rabo.BilevelProblem, or None to build config.problem")
        return type(problem)
    problem_cls = get_problem(config.problem)
    unknown = set(config.problem_options) - set(problem_cls.options)
    if unknown:
        raise ConfigError(f"unknown option {min(unknown)!r} of problem {config.problem!r}; "
                          f"allowed: {', '.join(sorted(problem_cls.options)) or 'none'}")
    check_ranges(problem_cls.ranges, config.problem_options)
    return problem_cls


def _text(path: str | Path | None) -> str | None:
    """A path as config.json holds it (str), whether given as str or Path."""
    return None if path is None else str(path)


def _schedule(cfg: RunConfig) -> tuple[RunConfig, CapacitySchedule]:
    """Who computes at which capacity in each round. A capacity trace (read here, checked
    against the clients and rounds) sets the capacity mode to "trace" and the capacities to
    those it holds, in the returned config."""
    trace = None
    if cfg.capacity_trace is not None:
        trace = read_trace(cfg.capacity_trace, cfg.clients, cfg.rounds)
        cfg = dataclasses.replace(cfg, capacity_mode="trace", capacities=sorted(
            {r for row in trace.values() for r in row}, reverse=True))
    schedule = CapacitySchedule(tuple(cfg.capacities), cfg.clients, cfg.capacity_mode, cfg.seed,
                                trace)
    return cfg, schedule


def _client_settings(cfg: RunConfig, options: EstimatorOptions) -> ClientSettings:
    """The steps, step sizes and (checked) estimator options every client runs with."""
    return ClientSettings(cfg.inner_steps, cfg.inner_lr, cfg.outer_steps if cfg.estimator else 0,
                          cfg.outer_lr, cfg.estimator, options, cfg.adapt_steps, cfg.device)


def construct(problem_cls: type[BilevelProblem], cfg: RunConfig) -> BilevelProblem:
    """``problem_cls(clients, seed, data_dir, **problem_options)``, the constructor contract of
    :class:`~rabo.BilevelProblem`; a constructor that cannot take these is a one-line error
    naming the class."""
    kwargs = {"clients": cfg.clients, "seed": cfg.seed, "data_dir": cfg.data_dir,
              **cfg.problem_options}
    try:
        return problem_cls(**kwargs)
    except TypeError as err:
        if err.__traceback__ is None or err.__traceback__.tb_next is not None:
            raise                       # raised inside the constructor: the user's own error
        raise ConfigError(f"problem class {problem_cls.__name__!r} cannot be built as "
                          f"{problem_cls.__name__}(clients, seed, data_dir, **options): {err}") \
            from None


def check_problem(problem: BilevelProblem, cfg: RunConfig) -> tuple[Params, Params]:
    """Check what the engine relies on before any round runs, so that a broken contract is a
    one-line error naming the problem's class, not an IndexError inside its code: as many
    clients as the run, a ChannelPlan, ``init_params`` giving two dicts of tensors whose names
    cover the plan's, and ``config()`` a dict. Returns the initial (x, y)."""
    cls = type(problem).__name__
    try:
        clients = problem.num_clients
    except AttributeError:
        raise ConfigError(f"problem class {cls!r} sets no num_clients; its constructor must set "
                          f"num_clients to the clients it is given ({cfg.clients})") from None
    if clients != cfg.clients:
        raise ConfigError(f"problem class {cls!r} has num_clients={clients!r}, but the run has "
                          f"clients={cfg.clients}; its constructor must set num_clients to the "
                          f"clients it is given")
    try:
        plan = problem.plan
    except AttributeError:
        plan = None
    if not isinstance(plan, ChannelPlan):
        raise ConfigError(f"problem class {cls!r} sets no plan: a rabo.ChannelPlan over the "
                          f"tensors of x and y it prunes (ChannelPlan({{}}) prunes none)")
    params = _checked_init(problem.init_params(cfg.seed), cls)
    missing = set(plan.dims) - set(params[0]) - set(params[1])
    if missing:
        raise ConfigError(f"problem class {cls!r}: its plan prunes {min(missing)!r}, which "
                          f"init_params does not return")
    if not isinstance(problem.config(), dict):
        raise ConfigError(f"problem class {cls!r}: config() must return a dict of its options")
    return params


def _checked_init(params: object, cls: str) -> tuple[Params, Params]:
    """``init_params``'s result if it is (x, y), two dicts of name -> torch.Tensor; otherwise a
    one-line error naming the class, what is expected and the first part that differs."""
    expected = (f"problem class {cls!r}: init_params(seed) must return (x, y), two dicts of "
                f"name -> torch.Tensor (x the outer variables, y the inner ones)")
    if not isinstance(params, (tuple, list)) or len(params) != 2:
        size = f" of {len(params)}" if isinstance(params, (tuple, list)) else ""
        raise ConfigError(f"{expected}, not a {type(params).__name__}{size}")
    for part, values in zip("xy", params):
        if not isinstance(values, dict):
            raise ConfigError(f"{expected}; its {part} is a {type(values).__name__}")
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise ConfigError(f"{expected}; its {part}[{key!r}] is a "
                                  f"{type(value).__name__}")
    return params[0], params[1]


def check_plans(problem: BilevelProblem, cfg: RunConfig) -> None:
    """:func:`rabo.check_plan` of the problem's plan on each of its :meth:`plan_models
    <rabo.BilevelProblem.plan_models>`, at the run's capacities below 1 (one random submodel
    each, seeded by the run's seed): a plan that does not slice the model as its forward
    couples it is a one-line PlanError before any round runs."""
    capacities = sorted({c for c in cfg.capacities if c < 1.0}, reverse=True)
    for model in problem.plan_models() if capacities else ():
        plan = model_plan(problem.plan, model)
        if plan.dims:
            check_plan(model.module, plan, model.example_inputs, capacities, seed=cfg.seed,
                       output=model.output)


def model_plan(plan: ChannelPlan, model: PlanModel) -> ChannelPlan:
    """The part of ``plan`` over ``model``'s parameters, named as the model names them."""
    names = {model.prefix + n: n for n, _ in model.module.named_parameters()}
    dims = {names[n]: axes for n, axes in plan.dims.items() if n in names}
    used = {a.group for axes in dims.values() for a in axes if a is not None}
    if model.output is not None:
        used.add(model.output.group)
    return ChannelPlan({g: c for g, c in plan.groups.items() if g in used}, dims)
