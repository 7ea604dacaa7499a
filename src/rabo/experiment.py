"""From a config to the objects a runtime needs: problem, mask policy, capacity schedule and
client settings. Both runtimes build their experiment here, so they run the same thing."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch

from .capacity import CapacitySchedule, read_trace
from .client import ClientSettings
from .config import RunConfig, resolve
from .errors import ConfigError, lookup
from .hypergrad import ESTIMATORS, EstimatorOptions
from .masks import MaskPolicy, make_policy
from .problem import BilevelProblem, check_ranges
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
    config's clients, seed, data_dir and problem options."""
    problem_cls = get_problem(config.problem) if problem is None else type(problem)
    if problem is None:
        unknown = set(config.problem_options) - set(problem_cls.options)
        if unknown:
            raise ConfigError(f"unknown option {min(unknown)!r} of problem {config.problem!r}; "
                              f"allowed: {', '.join(sorted(problem_cls.options)) or 'none'}")
        check_ranges(problem_cls.ranges, config.problem_options)
    name = reference(config.problem) if problem is None else problem.name
    cfg = resolve(dataclasses.replace(config, problem=name), problem_cls.defaults,
                  f"problem class {problem_cls.__name__!r}")
    options = EstimatorOptions(cfg.terms, cfg.step, cfg.mu, cfg.coords, cfg.perturb,
                               cfg.difference)
    for key in ("data_dir", "capacity_trace"):   # paths may be given as Path; JSON holds str
        if getattr(cfg, key) is not None:
            setattr(cfg, key, str(getattr(cfg, key)))
    if cfg.estimator is not None:
        lookup(ESTIMATORS, "estimator", cfg.estimator)
    policy = make_policy(cfg.policy, **cfg.policy_options)
    if problem is None:
        problem = construct(problem_cls, cfg)
    _, y = check_problem(problem, cfg)
    cfg.problem_options = problem.config()
    if cfg.estimator not in (None, "first-order") and not y:
        raise ConfigError(f"estimator {cfg.estimator!r} needs an inner variable y, which problem "
                          f"{problem.name!r} with these options has none of; use first-order")
    trace = None
    if cfg.capacity_trace is not None:
        trace = read_trace(cfg.capacity_trace, cfg.clients, cfg.rounds)
        cfg.capacity_mode = "trace"
        cfg.capacities = sorted({r for row in trace.values() for r in row}, reverse=True)
    schedule = CapacitySchedule(tuple(cfg.capacities), cfg.clients, cfg.capacity_mode, cfg.seed,
                                trace)
    settings = ClientSettings(cfg.inner_steps, cfg.inner_lr,
                              cfg.outer_steps if cfg.estimator else 0, cfg.outer_lr,
                              cfg.estimator, options, cfg.adapt_steps, cfg.device)
    return Experiment(cfg, problem, policy, schedule, settings)


def construct(problem_cls: type[BilevelProblem], cfg: RunConfig) -> BilevelProblem:
    """``problem_cls(clients, seed, data_dir, **problem_options)``, the constructor contract of
    :class:`~rabo.BilevelProblem`; a constructor that cannot take these is a one-line error
    naming the class."""
    kwargs = {"clients": cfg.clients, "seed": cfg.seed, "data_dir": cfg.data_dir,
              **cfg.problem_options}
    try:
        inspect.signature(problem_cls).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"problem class {problem_cls.__name__!r} cannot be built as "
                          f"{problem_cls.__name__}(clients, seed, data_dir, **options): {err}") \
            from None
    return problem_cls(**kwargs)


def check_problem(problem: BilevelProblem, cfg: RunConfig) -> tuple[Params, Params]:
    """Check what the engine relies on before any round runs, so that a broken contract is a
    one-line error naming the problem's class, not an IndexError inside its code: as many
    clients as the run, a ChannelPlan, ``init_params`` giving two dicts of tensors whose names
    cover the plan's, and ``config()`` a dict. Returns the initial (x, y)."""
    cls = type(problem).__name__
    clients = getattr(problem, "num_clients", None)
    if clients != cfg.clients:
        raise ConfigError(f"problem class {cls!r} has num_clients={clients!r}, but the run has "
                          f"clients={cfg.clients}; its constructor must set num_clients to the "
                          f"clients it is given")
    if not isinstance(getattr(problem, "plan", None), ChannelPlan):
        raise ConfigError(f"problem class {cls!r} sets no plan: a rabo.ChannelPlan over the "
                          f"tensors of x and y it prunes (ChannelPlan({{}}) prunes none)")
    params = problem.init_params(cfg.seed)
    if not (isinstance(params, (tuple, list)) and len(params) == 2
            and all(isinstance(p, dict) and all(isinstance(t, torch.Tensor) for t in p.values())
                    for p in params)):
        raise ConfigError(f"problem class {cls!r}: init_params(seed) must return (x, y), two "
                          f"dicts of name -> tensor, not {type(params).__name__}")
    missing = set(problem.plan.dims) - set(params[0]) - set(params[1])
    if missing:
        raise ConfigError(f"problem class {cls!r}: its plan prunes {min(missing)!r}, which "
                          f"init_params does not return")
    if not isinstance(problem.config(), dict):
        raise ConfigError(f"problem class {cls!r}: config() must return a dict of its options")
    return params
