"""From a config to the objects a runtime needs: problem, mask policy, capacity schedule and
client settings. Both runtimes build their experiment here, so they run the same thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .capacity import CapacitySchedule, read_trace
from .client import ClientSettings
from .config import RunConfig, resolve
from .errors import ConfigError, lookup
from .hypergrad import ESTIMATORS
from .masks import MaskPolicy, make_policy
from .problem import BilevelProblem
from .problems import get_problem


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
    object (its class's ``defaults`` fill the config); otherwise the built-in ``config.problem``."""
    if problem is None:
        problem_cls = get_problem(config.problem)
        unknown = set(config.problem_options) - set(problem_cls.options)
        if unknown:
            raise ConfigError(f"unknown option {min(unknown)!r} of problem {config.problem!r}; "
                              f"allowed: {', '.join(sorted(problem_cls.options))}")
        cfg = resolve(config, problem_cls.defaults)
    else:
        cfg = resolve(dataclasses.replace(config, problem=problem.name), type(problem).defaults)
    if cfg.estimator is not None:
        lookup(ESTIMATORS, "estimator", cfg.estimator)
    policy = make_policy(cfg.policy, **cfg.policy_options)
    if problem is None:
        problem = problem_cls(clients=cfg.clients, seed=cfg.seed, data_dir=cfg.data_dir,
                              **cfg.problem_options)
    cfg.problem_options = problem.config()
    if cfg.estimator not in (None, "first-order") and not problem.init_params(cfg.seed)[1]:
        raise ConfigError(f"estimator {cfg.estimator!r} needs an inner variable y, which problem "
                          f"{problem.name!r} with these options has none of; use first-order")
    trace = None
    if cfg.capacity_trace is not None:
        trace = read_trace(cfg.capacity_trace, cfg.clients, cfg.rounds)
        cfg.capacity_mode = "trace"
        cfg.capacities = sorted({r for row in trace.values() for r in row}, reverse=True)
    schedule = CapacitySchedule(tuple(cfg.capacities), cfg.clients, cfg.capacity_mode, cfg.seed,
                                trace)
    options = {"terms": cfg.terms, "step": cfg.step, "mu": cfg.mu, "coords": cfg.coords,
               "perturb": cfg.perturb, "difference": cfg.difference}
    settings = ClientSettings(cfg.inner_steps, cfg.inner_lr,
                              cfg.outer_steps if cfg.estimator else 0, cfg.outer_lr,
                              cfg.estimator, options, cfg.adapt_steps, cfg.device)
    return Experiment(cfg, problem, policy, schedule, settings)
