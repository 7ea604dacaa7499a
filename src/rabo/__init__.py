"""rabo: resource-adaptive federated bilevel optimization (RABO and RAFBO).

Public entry points: :func:`hypergradient` for a user's own bilevel problem, and the ``rabo``
command (``rabo run``) for federated runs in the in-process simulator.
"""

from .errors import ConfigError, DataError, RaboError, UnknownNameError
from .hypergrad import ESTIMATORS, hypergradient
from .problem import BilevelProblem, Objective
from .submodel import Axis, ChannelPlan

__all__ = ["ESTIMATORS", "Axis", "BilevelProblem", "ChannelPlan", "ConfigError", "DataError",
           "Objective", "RaboError", "UnknownNameError", "hypergradient"]
__version__ = "0.1.0"
