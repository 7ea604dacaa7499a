"""Run configuration as plain data: defaults < problem defaults < TOML file < CLI flags < --set.

Every field of :class:`RunConfig` is settable by ``--set key=value`` (problem options by
``--set problem.key=value``); the fully resolved config is what ``config.json`` holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from .capacity import check_capacities
from .errors import ConfigError, UnknownNameError, check_positive
from .methods import METHODS, get_method

PAPER_CAPACITIES = [1.0, 0.5, 0.25, 0.125, 0.0625]


@dataclass
class RunConfig:
    """One run. ``None`` means "take it from the method preset or the problem's defaults"."""

    problem: str = "losstuning"
    method: str = "rabo"
    rounds: int | None = None
    clients: int = 10
    capacities: list[float] = field(default_factory=lambda: list(PAPER_CAPACITIES))
    capacity_mode: str = "fixed"
    capacity_trace: str | None = None
    seed: int = 0
    policy: str | None = None
    estimator: str | None = None
    inner_steps: int | None = None
    inner_lr: float | None = None
    outer_steps: int | None = None
    outer_lr: float | None = None
    terms: int | None = None
    step: float | None = None
    mu: float | None = None
    coords: int | None = None
    perturb: str = "auto"
    difference: str | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    participation: float = 1.0
    fail_prob: float = 0.0
    adapt_steps: int | None = None
    data_dir: str | None = None
    threads: int | None = None
    device: str = "cpu"
    batch_clients: bool | None = None
    problem_options: dict[str, Any] = field(default_factory=dict)
    policy_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES: dict[str, type] = {
    "problem": str, "method": str, "rounds": int, "clients": int, "capacities": list,
    "capacity_mode": str, "capacity_trace": str, "seed": int, "policy": str, "estimator": str, "inner_steps": int,
    "inner_lr": float, "outer_steps": int, "outer_lr": float, "terms": int, "step": float,
    "mu": float, "coords": int, "perturb": str, "difference": str, "eval_every": int, "adapt_steps": int,
    "checkpoint_every": int, "participation": float, "fail_prob": float,
    "data_dir": str, "threads": int, "device": str, "batch_clients": bool,
}
RUN_DEFAULTS: dict[str, Any] = {
    "rounds": None, "inner_steps": None, "inner_lr": None, "outer_steps": None,
    "outer_lr": None, "terms": None, "step": None, "mu": None, "eval_every": None,
    "adapt_steps": 0, "difference": "central"}
"""Run settings a problem's ``defaults`` provide, with the value where it provides none (None:
the config or the problem must give it)."""


MAXIMA: dict[str, int] = {"clients": 100_000, "threads": 4096,
                          "inner_steps": 100_000, "outer_steps": 100_000}
"""The documented upper bounds of the counts (beyond them a run cannot fit or finish); terms':
:class:`~rabo.hypergrad.EstimatorOptions`."""


def check_device(device: str) -> None:
    """``cpu`` or an available ``cuda``/``cuda:N``, else a one-line error naming both."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not allowed; expected cpu, cuda or cuda:N") \
            from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not allowed; expected cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} is not available here (no CUDA GPU); use cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")


def differing_keys(saved: dict[str, Any], now: dict[str, Any],
                   ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys of ``now`` (a config as JSON) whose values differ from ``saved`` (a run's
    config.json), ``ignore`` aside, sorted. ``data_dir`` compares as a directory, however it was
    written (absolute or relative, through ``..`` or a symbolic link; resolved from here), so
    the same data spelled another way does not refuse a resume or a reuse."""
    def same(key: str) -> bool:
        a, b = saved.get(key), now[key]
        if key == "data_dir" and a is not None and b is not None:
            return Path(a).resolve() == Path(b).resolve()
        return a == b
    return sorted(k for k in now if k not in ignore and not same(k))


def parse_value(key: str, text: Any, kind: type) -> Any:
    """Coerce a --set or TOML value to the field's type, or raise naming key, value and type."""
    if not isinstance(text, str):
        if kind is float and isinstance(text, int) and not isinstance(text, bool):
            return float(text)
        if kind is list and isinstance(text, list):
            return text
        if isinstance(text, kind) and not (kind is int and isinstance(text, bool)):
            return text
        raise ConfigError(f"{key}={text!r} is not of type {kind.__name__}")
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is list:
            return [float(v) for v in text.split(",") if v.strip()]
        if kind is str and text.lower() == "none":
            return None
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not of type {kind.__name__}") from None


def parse_json(key: str, value: Any) -> Any:
    """A policy option: TOML values pass through, --set strings are read as JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except RecursionError:
        raise ConfigError(f"{key}: a JSON value nested too deeply") from None
    except json.JSONDecodeError:
        raise ConfigError(f"{key}={value!r} is not a JSON value (e.g. true, 3, [[0, 0.5]])") \
            from None


MAX_CONFIG_BYTES = 1_000_000


def load_toml(path: str | Path | Traversable) -> dict[str, Any]:
    """Read a TOML config file (a path, or a file inside the installed package; a file of at
    most 1 MB); a missing, malformed, oversized, not regular or too deeply nested file is a
    one-line ConfigError."""
    try:
        with (Path(path) if isinstance(path, str) else path).open("rb") as fh:
            if isinstance(path, (str, Path)) and not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"config file {str(path)!r} is not a regular file")
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(path)!r} is larger than "
                              f"{MAX_CONFIG_BYTES:,} bytes; a config is a few lines")
        return tomllib.loads(data.decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except RecursionError:
        raise ConfigError(f"cannot read config file {str(path)!r}: nested too deeply") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot read config file {str(path)!r}: {msg}") from None


SETTING_NAME = re.compile(r"([1-9][0-9]*)w([1-9][0-9]*)s")


@dataclass(frozen=True)
class ConfigFile:
    """A config file split into its base keys and the tables that refine them for one run:
    ``[setting.NwKs]`` (N-way K-shot, episodic problems: head step sizes depend on N) and
    ``[method.NAME]`` (each method's tuned step sizes). A run takes the base, then its
    setting's table, then its method's."""

    base: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tables(self, method: str | None, ways: int | None = None,
               shots: int | None = None) -> list[dict[str, Any]]:
        """The tables to apply after the base, in order, for a run of ``method`` with ``ways``
        and ``shots`` (empty where the file has none)."""
        return [self.settings.get(f"{ways}w{shots}s", {}), self.methods.get(method or "", {})]


def split_config(values: dict[str, Any], source: str | Path) -> ConfigFile:
    """Split a config file's values into a :class:`ConfigFile`; a table named for no method or
    no NwKs setting, or a setting table that sets ways or shots, is a one-line error."""
    values = dict(values)
    tables = {kind: values.pop(kind) if isinstance(values.get(kind), dict) else {}
              for kind in ("setting", "method")}
    for name, table in tables["method"].items():
        if name not in METHODS or not isinstance(table, dict):
            raise UnknownNameError(f"[method.NAME] table of {str(source)!r}:", name, METHODS)
    for name, table in tables["setting"].items():
        if not SETTING_NAME.fullmatch(name) or not isinstance(table, dict):
            raise ConfigError(f"[setting.{name}] table of {str(source)!r}: {name!r} is not an "
                              f"N-way K-shot setting (allowed: NwKs, e.g. 5w1s, 20w5s)")
        options = table.get("problem_options", {})
        if {"ways", "shots"} & ({k.removeprefix("problem.") for k in table} | set(options)):
            raise ConfigError(f"[setting.{name}] table of {str(source)!r} sets ways or shots; "
                              f"its name already says them")
    return ConfigFile(values, tables["setting"], tables["method"])


def read_config(path: str | Path | Traversable) -> ConfigFile:
    """A config file, read and split (:func:`load_toml`, :func:`split_config`)."""
    return split_config(load_toml(path), path)


PACKAGED_CONFIGS = {"fewshot": "fewshot.toml"}
"""Problems whose tuned run settings ship inside the package, in ``rabo/configs/``: both
``rabo run`` (without ``--config``) and ``rabo reproduce`` start from them."""


def packaged_config(problem: str) -> ConfigFile:
    """The packaged run settings of ``problem`` (:data:`PACKAGED_CONFIGS`; empty for a problem
    without), read with importlib.resources so that a wheel and a checkout give the same; a
    missing or unreadable file is a one-line ConfigError, never an empty config."""
    name = PACKAGED_CONFIGS.get(problem)
    if name is None:
        return ConfigFile()
    return read_config(resources.files("rabo") / "configs" / name)


def apply(config: RunConfig, values: dict[str, Any], option_types: dict[str, type]) -> None:
    """Set fields from a mapping: plain keys, "problem.rho" / "policy.rotate" keys, or the TOML
    tables ``[problem_options]`` and ``[policy_options]``."""
    for key, value in values.items():
        if key == "problem_options" and isinstance(value, dict):
            apply(config, {f"problem.{k}": v for k, v in value.items()}, option_types)
        elif key == "policy_options" and isinstance(value, dict):
            apply(config, {f"policy.{k}": v for k, v in value.items()}, option_types)
        elif key.startswith("policy."):
            config.policy_options[key.removeprefix("policy.")] = parse_json(key, value)
        elif key.startswith("problem."):
            opt = key.removeprefix("problem.")
            if opt not in option_types:
                raise UnknownNameError(f"option of problem {config.problem!r}:", opt, option_types)
            config.problem_options[opt] = parse_value(key, value, option_types[opt])
        elif key in FIELD_TYPES:
            setattr(config, key, parse_value(key, value, FIELD_TYPES[key]))
        else:
            raise UnknownNameError("config key", key,
                                   list(FIELD_TYPES) + [f"problem.{k}" for k in option_types])


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


# The most seconds a Flower run waits for a phase's replies (``--timeout``): a day; Flower
# refuses messages whose time to live ends after the year 9999.
PHASE_TIMEOUT_MAX = 86_400.0


def check_seconds(name: str, value: Any, most: float = math.inf) -> float:
    """``value`` (a flag's text or a run config's number) as seconds, refused unless a finite
    number > 0 and at most ``most``."""
    seconds = parse_value(name, value, float)
    check_positive(name, seconds)
    if seconds > most:
        raise ConfigError(f"{name}={seconds!r} is not allowed; {name} must be a number of "
                          f"seconds > 0 and ≤ {most:g}")
    return seconds


def resolve(config: RunConfig, problem_defaults: dict[str, Any],
            source: str = "the problem") -> RunConfig:
    """Fill every ``None`` from the method preset and the problem's defaults (those of
    ``source``, for error messages), and validate."""
    method = get_method(config.method)
    method.check_problem(config.problem)
    for key, value in method.problem_options.items():
        if config.problem_options.get(key, value) != value:
            raise ConfigError(f"problem.{key}={config.problem_options[key]!r} contradicts method "
                              f"{method.name!r}, which needs {key}={value!r}")
    out = dataclasses.replace(config, problem_options={**config.problem_options,
                                                       **method.problem_options},
                              policy_options=dict(config.policy_options))
    if out.policy is None:
        out.policy = method.policy
    if out.estimator is None:
        out.estimator = method.estimator
    for key, fallback in RUN_DEFAULTS.items():
        if getattr(out, key) is None:
            setattr(out, key, problem_defaults.get(key, fallback))
        if getattr(out, key) is None:
            raise ConfigError(f"{key} is not set: give it (--set {key}=VALUE) or put it in the "
                              f"defaults of {source}")
    for key in ("rounds", "clients", "inner_steps", "outer_steps", "eval_every"):
        check_positive(key, getattr(out, key), integer=True)
    for key, most in MAXIMA.items():
        if getattr(out, key) is not None and getattr(out, key) > most:
            raise ConfigError(f"{key}={getattr(out, key)!r} is not allowed; at most {most:,}")
    for key in ("inner_lr", "outer_lr"):
        check_positive(key, getattr(out, key))
    if out.checkpoint_every is None:
        out.checkpoint_every = out.eval_every
    check_positive("checkpoint_every", out.checkpoint_every, integer=True)
    if not (math.isfinite(out.participation) and 0.0 < out.participation <= 1.0):
        raise ConfigError(f"participation={out.participation!r} is outside (0, 1]")
    if not (math.isfinite(out.fail_prob) and 0.0 <= out.fail_prob < 1.0):
        raise ConfigError(f"fail_prob={out.fail_prob!r} is outside [0, 1)")
    if out.threads is not None:
        check_positive("threads", out.threads, integer=True)
    check_device(out.device)
    if out.seed < 0:
        raise ConfigError(f"seed={out.seed!r} is not allowed; seed must be an integer ≥ 0")
    out.capacities = check_capacities(out.capacities)
    if len(out.capacities) > out.clients and out.capacity_trace is None:
        raise ConfigError(f"{len(out.capacities)} capacities for {out.clients} clients; "
                          f"give at most one per client")
    return out
