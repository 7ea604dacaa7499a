"""rabo: resource-adaptive federated bilevel optimization (RABO and RAFBO).

Public entry points: :func:`hypergradient` for a user's own bilevel problem;
:class:`BilevelProblem` to subclass for a federated one, :class:`RunConfig`, :func:`build` and
:func:`simulate` to run it in this process (the library form of ``rabo run``);
:func:`trace_plan` and :func:`check_plan` for a model's channel plan; and the ``rabo``
command (``rabo run``, ``rabo reproduce``, ``rabo flower``, …).
"""

from .config import RunConfig
from .errors import ConfigError, DataError, RaboError, UnknownNameError
from .experiment import Experiment, build
from .hypergrad import ESTIMATORS, hypergradient
from .models.trace import PlanError, check_plan, trace_plan
from .problem import BilevelProblem, Objective
from .rounds import RunState
from .runtime.simulate import run as simulate
from .submodel import Axis, ChannelPlan, Params

__all__ = ["ESTIMATORS", "Axis", "BilevelProblem", "ChannelPlan", "ConfigError", "DataError",
           "Experiment", "Objective", "Params", "PlanError", "RaboError", "RunConfig", "RunState",
           "UnknownNameError", "build", "check_plan", "hypergradient", "simulate", "trace_plan"]
__version__ = "0.1.0"
