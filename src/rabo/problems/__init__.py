"""Built-in problems by name (SPEC §7)."""

from __future__ import annotations

from ..errors import lookup
from ..problem import BilevelProblem
from .fewshot import FewShot
from .losstuning import LossTuning
from .quadratic import Quadratic

PROBLEMS: dict[str, type[BilevelProblem]] = {"quadratic": Quadratic, "losstuning": LossTuning,
                                              "fewshot": FewShot}


def get_problem(name: str) -> type[BilevelProblem]:
    return lookup(PROBLEMS, "problem", name)
