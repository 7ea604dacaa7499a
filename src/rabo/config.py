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
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from .capacity import check_capacities
from .errors import ConfigError, UnknownNameError, check_positive
from .methods import METHODS, Method, get_method

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


OPTION_TABLES = {"problem_options": "problem.", "policy_options": "policy."}
"""The fields holding a table of options, and the prefix that names one option on the command
line (``--set problem.rho=100``) or as a flat key."""


def _value_type(hint: Any) -> type:
    """The type a field's value is parsed as: ``int | None`` → int, ``list[float]`` → list."""
    if isinstance(hint, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


FIELD_TYPES: dict[str, type] = {
    name: _value_type(hint) for name, hint in typing.get_type_hints(RunConfig).items()
    if name not in OPTION_TABLES}
"""Each settable field of :class:`RunConfig` and the type its value is parsed as, derived
from the dataclass's own annotations."""
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


def flat_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON (``RunConfig.to_dict()``, a run's config.json) with its option tables
    spread into flat keys beside the fields: "problem.rho", "policy.segments" (a table that is
    not a dict, as in a hand-edited file, holds none)."""
    flat = {k: v for k, v in values.items() if k not in OPTION_TABLES}
    for table, prefix in OPTION_TABLES.items():
        options = values.get(table)
        flat.update({prefix + k: v for k, v in options.items()} if isinstance(options, dict)
                    else {})
    return flat


def differing_keys(saved: dict[str, Any], now: dict[str, Any],
                   ignore: tuple[str, ...] = ()) -> list[str]:
    """The flat keys (:func:`flat_config`: fields, "problem.X", "policy.X") of ``now`` (a config
    as JSON), and the options of ``saved`` (a run's config.json), whose values differ between
    the two, ``ignore`` aside, sorted. ``data_dir`` compares as a directory, however it was
    written (absolute or relative, through ``..`` or a symbolic link; resolved from here), so
    the same data spelled another way does not refuse a resume or a reuse."""
    saved, now = flat_config(saved), flat_config(now)

    def same(key: str) -> bool:
        a, b = saved.get(key), now.get(key)
        if key == "data_dir" and a is not None and b is not None:
            return Path(a).resolve() == Path(b).resolve()
        return a == b
    keys = set(now) | {k for k in saved if "." in k}
    return sorted(k for k in keys if k not in ignore and not same(k))


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
        return [self.setting_table(ways, shots), self.method_table(method)]

    def setting_table(self, ways: int | None, shots: int | None) -> dict[str, Any]:
        """The ``[setting.NwKs]`` table of N = ``ways``, K = ``shots`` (empty without one)."""
        return self.settings.get(f"{ways}w{shots}s", {})

    def method_table(self, method: str | None) -> dict[str, Any]:
        """The ``[method.NAME]`` table of ``method`` (empty without one)."""
        return self.methods.get(method or "", {})


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


def flatten(values: dict[str, Any], option_types: dict[str, type],
            problem: str | None) -> dict[str, Any]:
    """One layer of config values (a TOML file's, the flags', the --set pairs') as flat keys
    with parsed values: field names, and "problem.KEY" / "policy.KEY" for the options, given so
    or in the tables ``[problem_options]`` and ``[policy_options]``. An unknown key or a value
    not of its type is a one-line error; ``problem`` (its ``option_types``) names it."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in OPTION_TABLES and isinstance(value, dict):
            prefix = OPTION_TABLES[key]
            flat.update(flatten({prefix + k: v for k, v in value.items()}, option_types,
                                problem))
        elif key.startswith("policy."):
            flat[key] = parse_json(key, value)
        elif key.startswith("problem."):
            opt = key.removeprefix("problem.")
            if opt not in option_types:
                raise UnknownNameError(f"option of problem {problem!r}:", opt, option_types)
            flat[key] = parse_value(key, value, option_types[opt])
        elif key in FIELD_TYPES:
            flat[key] = parse_value(key, value, FIELD_TYPES[key])
        else:
            raise UnknownNameError("config key", key,
                                   list(FIELD_TYPES) + [f"problem.{k}" for k in option_types])
    return flat


def overlay(config: RunConfig, flat: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with the flat values of :func:`flatten` set (an option added to or
    replacing those ``config`` has); ``config`` itself is left as it is."""
    def options(prefix: str) -> dict[str, Any]:
        return {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}

    fields = {k: v for k, v in flat.items() if "." not in k}
    return dataclasses.replace(
        config, **fields, problem_options={**config.problem_options, **options("problem.")},
        policy_options={**config.policy_options, **options("policy.")})


def apply(config: RunConfig, values: dict[str, Any], option_types: dict[str, type]) -> RunConfig:
    """A copy of ``config`` with the values of one layer set (:func:`flatten`)."""
    return overlay(config, flatten(values, option_types, config.problem))


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


INTEGERS = ("rounds", "clients", "inner_steps", "outer_steps", "eval_every")
STEP_SIZES = ("inner_lr", "outer_lr")


def resolve(config: RunConfig, problem_defaults: dict[str, Any],
            source: str = "the problem") -> RunConfig:
    """``config`` with every ``None`` filled from the method preset and the problem's defaults
    (those of ``source``, for error messages), validated; ``config`` itself is left as it is."""
    method = get_method(config.method)
    method.check_problem(config.problem)
    for key, value in method.problem_options.items():
        if config.problem_options.get(key, value) != value:
            raise ConfigError(f"problem.{key}={config.problem_options[key]!r} contradicts method "
                              f"{method.name!r}, which needs {key}={value!r}")
    out = _filled(config, method, problem_defaults, source)
    _check_sizes(out)
    _check_choices(out)
    capacities = check_capacities(out.capacities)
    if len(capacities) > out.clients and out.capacity_trace is None:
        raise ConfigError(f"{len(capacities)} capacities for {out.clients} clients; "
                          f"give at most one per client")
    return dataclasses.replace(out, capacities=capacities)


def _filled(config: RunConfig, method: Method, problem_defaults: dict[str, Any],
            source: str) -> RunConfig:
    """``config`` with the method's problem options, policy and estimator, the problem's
    defaults (:data:`RUN_DEFAULTS`) where it sets none, and a checkpoint every evaluation
    unless it says otherwise; a run setting that neither gives is a one-line error."""
    unset = {key: problem_defaults.get(key, fallback) for key, fallback in RUN_DEFAULTS.items()
             if getattr(config, key) is None}
    for key, value in unset.items():
        if value is None:
            raise ConfigError(f"{key} is not set: give it (--set {key}=VALUE) or put it in the "
                              f"defaults of {source}")
    out = dataclasses.replace(
        config, **unset, problem_options={**config.problem_options, **method.problem_options},
        policy_options=dict(config.policy_options),
        policy=method.policy if config.policy is None else config.policy,
        estimator=method.estimator if config.estimator is None else config.estimator)
    if out.checkpoint_every is None:
        out = dataclasses.replace(out, checkpoint_every=out.eval_every)
    return out


def _check_sizes(cfg: RunConfig) -> None:
    """Counts are integers ≥ 1 and at most their :data:`MAXIMA`; step sizes finite and > 0."""
    for key in INTEGERS:
        check_positive(key, getattr(cfg, key), integer=True)
    for key, most in MAXIMA.items():
        if getattr(cfg, key) is not None and getattr(cfg, key) > most:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not allowed; at most {most:,}")
    for key in STEP_SIZES:
        check_positive(key, getattr(cfg, key))
    check_positive("checkpoint_every", cfg.checkpoint_every, integer=True)


def _check_choices(cfg: RunConfig) -> None:
    """Probabilities in their ranges, names among the allowed, the device available, optional
    counts ≥ 1 where given and the seed ≥ 0."""
    if not (math.isfinite(cfg.participation) and 0.0 < cfg.participation <= 1.0):
        raise ConfigError(f"participation={cfg.participation!r} is outside (0, 1]")
    if not (math.isfinite(cfg.fail_prob) and 0.0 <= cfg.fail_prob < 1.0):
        raise ConfigError(f"fail_prob={cfg.fail_prob!r} is outside [0, 1)")
    if cfg.threads is not None:
        check_positive("threads", cfg.threads, integer=True)
    check_device(cfg.device)
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} is not allowed; seed must be an integer ≥ 0")
