"""Errors a user can cause: each carries a one-line message naming the bad value and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


class RaboError(Exception):
    """Base class: the CLI prints the message on one line, without a traceback, and exits 2."""


class ConfigError(RaboError):
    """A configuration value is outside what is allowed."""


class UnknownNameError(ConfigError):
    """A name (problem, method, estimator, policy, model, dataset, option) is not registered."""

    def __init__(self, kind: str, name: object, allowed: Iterable[str]):
        allowed = sorted(allowed)
        super().__init__(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")
        self.kind, self.name, self.allowed = kind, name, allowed


class DataError(RaboError):
    """A data directory or file is missing, truncated or malformed."""


class GridError(RaboError):
    """Some runs of a grid failed (each reported with its name); the others ran to the end."""


class StoppedError(RaboError):
    """The run stopped before its last round; the rounds done are checkpointed, to resume."""


class DivergedError(StoppedError):
    """Every client's update in a round was non-finite: the run diverged (steps too large)."""


class NoClientsError(StoppedError):
    """No client could be reached: no node hosts some client, or none answered in a phase."""


def lookup(table: dict, kind: str, name: str):
    """Return ``table[name]`` or raise an :class:`UnknownNameError` listing the allowed names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, table) from None


def check_positive(name: str, value: object, integer: bool = False) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is an integer ≥ 1 (``integer``) or else a
    finite number > 0; a bool is neither."""
    if integer:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0
    if not ok:
        allowed = "an integer ≥ 1" if integer else "a finite number > 0"
        raise ConfigError(f"{name}={value!r} is not allowed; {name} must be {allowed}")
