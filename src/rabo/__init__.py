"""rabo: resource-adaptive federated bilevel optimization (RABO and RAFBO).

Public entry points: :func:`hypergradient` for a user's own bilevel problem;
:class:`BilevelProblem` to subclass for a federated one (its data: :class:`Task`, what g reads
and what f reads), :class:`RunConfig`, :func:`build` and
:func:`simulate` to run it in this process (the library form of ``rabo run``);
:func:`trace_plan` and :func:`check_plan` for a model's channel plan; and the ``rabo``
command (``rabo run``, ``rabo reproduce``, ``rabo flower``, …). The names that need torch load
on first use, so the command can take Ctrl-C while torch imports (:mod:`rabo.launch`).
"""

from importlib import import_module

from .errors import ConfigError, DataError, PlanError, RaboError, UnknownNameError

_LAZY = {  # name -> (module, attribute)
    "RunConfig": ("config", "RunConfig"), "Experiment": ("experiment", "Experiment"),
    "build": ("experiment", "build"), "ESTIMATORS": ("hypergrad", "ESTIMATORS"),
    "hypergradient": ("hypergrad", "hypergradient"), "check_plan": ("models.trace", "check_plan"),
    "trace_plan": ("models.trace", "trace_plan"),
    "BilevelProblem": ("problem", "BilevelProblem"), "Objective": ("problem", "Objective"),
    "RunState": ("rounds", "RunState"), "simulate": ("runtime.loop", "run"),
    "Axis": ("submodel", "Axis"), "ChannelPlan": ("submodel", "ChannelPlan"),
    "Params": ("submodel", "Params"), "Task": ("problem", "Task"),
    "PlanModel": ("problem", "PlanModel")}

__all__ = ["ESTIMATORS", "Axis", "BilevelProblem", "ChannelPlan", "ConfigError", "DataError",
           "Experiment", "Objective", "Params", "PlanError", "PlanModel", "RaboError",
           "RunConfig", "RunState", "Task", "UnknownNameError", "build", "check_plan",
           "hypergradient", "simulate", "trace_plan"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'rabo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
