"""Reproductions of the paper's experiments: each runs a grid of (setting, method) configs with
the simulator into one output directory and writes a results table (Markdown, CSV) and plots.

``fig6`` (paper V-B): loss tuning with the VS loss on long-tailed data, every pruned method at
half width (the paper's capacity setting), FedMBO (tuned, full model) and FedAvg (untuned, full
model) as dashed reference lines; final balanced test accuracy and cost relative to FedMBO.

Few-shot on Omniglot (paper V-A), run settings from the packaged ``rabo/configs/fewshot.toml``
(or ``config``):

- ``table2``: every few-shot method × {5w1s, 5w5s, 20w1s, 20w5s}, 10 clients at capacities
  {1, ½, ¼, ⅛, 1/16} (two each); final test accuracy ± 95 % interval over ``final_episodes``.
- ``table3``: RABO and RAFBO (and rabo-cov, rafbo-cov) with 10, 20, 30 and 50 clients, 5w1s and
  5w5s; ordering: fewer clients ≥ the next more, then (ours) each cover variant ≥ the paper's
  method at the same number of clients.
- ``fig4``: (a) FLOPs and bytes of RABO and RAFBO relative to FedMBO (bar chart); (b) the
  cover number: every client at half width with explicit segments so that C_x = 1 (nine clients
  hold the first half of every layer's channels, one client the second half: the second half is
  trained by one client only) or C_x = 5 (five clients each half); both have capacity ½ for all,
  so only how the halves are spread differs. C_x here is the *channel* cover (the fewest
  clients whose submodel keeps a channel: what the segments control), logged per round as
  ``channel_cover_x_min`` and tabulated as ``min_channel_cover_x``. The engine's
  coordinate-wise ``min_cover_x`` is 0 in both designs: a half-width client keeps the conv
  weights between its own input and output channels only, so weights from one half to the
  other are in nobody's submodel (with every client at ½ width the weights' mean cover is
  10 · ¼ = 2.5, so no design reaches a coordinate cover of 5).

``sets`` (``--set KEY=VALUE``) changes every run of an experiment, e.g. Table II at the paper's
ResNet-12 backbone (:func:`with_sets`).

Every experiment runs its cells at ``seeds`` consecutive seeds (:func:`seeded_table`): one table
row per setting and run with the seeds' mean and 95 % interval, and the paper's ordering as
differences with intervals. The few-shot tables cover every setting in ``out``
(:func:`fewshot_settings`): ``settings`` says which to train.

``--quick`` runs the same pipeline at a size that finishes in minutes (2 rounds, one task per
client, 20 final test episodes).

Results accumulate in ``--out`` (e.g. the repository's ``results/``, which keeps text only): a
run directory counts as finished by its config.json and a complete metrics.jsonl alone (no
model file or checkpoint needed), gets ``episodes.csv`` (the final evaluation's per-episode
accuracies), and the tables and plots are rebuilt from these text files, byte-identically when
nothing was trained.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .config import (
    PAPER_CAPACITIES,
    ConfigFile,
    RunConfig,
    apply,
    differing_keys,
    flat_config,
    packaged_config,
    read_config,
)
from .errors import ConfigError, DivergedError, GridError, RaboError, UnknownNameError
from .experiment import build
from .problems import FewShot, get_problem
from .report import Run, bars, load_runs, plot, summarize
from .rounds import divergence
from .runtime.loop import run
from .runtime.pool import DIVERGED, DONE, FAILED, FINISHED, STARTED, run_tasks
from .tables import read_csv, write_csv, write_markdown, write_table

FIG6_METHODS = ("fedmbo", "fedavg", "rabo", "rafbo", "static", "fedrolex", "fiarse", "oap")
REFERENCES = frozenset({"fedmbo", "fedavg"})
# Step sizes for the 28×28 small CNN, chosen on the clients' validation splits (docs/tuning.md
# §fig6). Other data sets use the problem's defaults.
FIG6_STEPS = {"fashion-mnist": {"inner_lr": 0.3, "outer_lr": 0.1},
              "mnist": {"inner_lr": 0.3, "outer_lr": 0.1}}
FEWSHOT_METHODS = ("fedmbo", "protonet", "maml", "static", "oap", "fedrolex", "fiarse", "rabo",
                   "rafbo", "rabo-cov", "rafbo-cov")
# the paper's ordering (Table II: "state-of-the-art performance compared to the baselines
# except for three full model training methods"): fedmbo, protonet, maml ≥ rabo, and rabo,
# rafbo ≥ every single-level baseline; then ours: rabo-cov and rafbo-cov (importance-cover
# masks) ≥ every single-level baseline, and the cover variants ≥ the paper's masks
SINGLE_LEVEL = ("static", "oap", "fedrolex", "fiarse")
COVER_OVER_PAPER = (("rabo-cov", "rabo"), ("rafbo-cov", "rafbo"))   # ours ≥ the paper's masks
ORDERING = (tuple((m, "rabo") for m in ("fedmbo", "protonet", "maml"))
            + tuple((m, b) for m in ("rabo", "rafbo", "rabo-cov", "rafbo-cov")
                    for b in SINGLE_LEVEL)
            + COVER_OVER_PAPER)
TABLE3_METHODS = ("rabo", "rafbo", "rabo-cov", "rafbo-cov")
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
TABLE3_CLIENTS = (10, 20, 30, 50)
MAX_SEEDS = 100
FEWSHOT_OPTIONS = {k: type(v) for k, v in FewShot.options.items()}
QUICK_FEWSHOT = {"rounds": 2, "eval_every": 1, "problem.tasks": 1, "problem.eval_episodes": 10,
                 "problem.final_episodes": 20}
# C_x experiment (fig4 b): 10 clients, each keeps half of every layer's channels
CX_SEGMENTS = {"cx1": [[[0.0, 0.5]]] * 9 + [[[0.5, 1.0]]],
               "cx5": [[[0.0, 0.5]]] * 5 + [[[0.5, 1.0]]] * 5}


def run_grid(configs: dict[str, RunConfig], out: Path, progress: bool = True,
             jobs: int = 1, train: bool = True,
             tabulate_only: frozenset[str] = frozenset()) -> list[Path]:
    """Run every config into ``out/<name>``, so that a reproduction accumulates across sessions
    and an interrupted one continues where it stopped: a finished run (:func:`finished`) is
    reused, an unfinished one resumes from its checkpoint, or without one (text results only,
    e.g. a fresh clone) starts over; a directory holding a run is touched only if it ran with
    the same config, all checked before any run trains. With ``jobs`` > 1 the runs to train go
    to that many worker processes (:func:`~rabo.runtime.pool.run_tasks`) of torch's threads //
    ``jobs`` threads each (a config's ``threads`` wins); a run's results depend on its config
    alone, so they equal those of the runs one after another (up to float rounding where the
    thread counts differ). Each finished run gets ``episodes.csv`` (:func:`write_episodes`).
    Returns the run directories. A line on stderr per run started and done (with
    ``progress``); a run that diverges is reported and kept as far as it got (the tables'
    ``rounds`` column shows where it stopped); one that fails otherwise is reported in one line,
    the others still run, and then a :class:`GridError` names it. With ``train`` False nothing
    trains, and the runs named in ``tabulate_only`` never do: those unfinished are named on
    stderr and left out of the returned directories."""
    check_jobs(jobs)
    paths, todo = [], {}
    for name, config in configs.items():
        path = out / name
        exp = build(config)
        saved = (path / "config.json").exists()
        if saved:
            _check_reusable(path, exp.config)
        if not finished(path, exp.config.rounds):
            resume = saved and (path / checkpoint.FILE).exists()
            todo[name] = (name, exp.config.to_dict(), str(path), resume)
        paths.append(path)
    left = [name for name in todo if not train or name in tabulate_only]
    if left:
        names = left[:6] + ([f"… ({len(left) - 6} more)"] if len(left) > 6 else [])
        print(f"rabo reproduce: {len(left)} of {len(configs)} runs not finished, left out: "
              + ", ".join(names), file=sys.stderr, flush=True)
        paths = [path for name, path in zip(configs, paths) if name not in left]
        todo = {name: task for name, task in todo.items() if name not in left}
    show = _GridProgress(len(todo), progress)
    if jobs == 1 or not todo:
        outcomes = {}
        for name, task in todo.items():
            show(name, STARTED)
            outcomes[name] = _train(*task, progress)
            show(name, FINISHED, outcomes[name])
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        outcomes = run_tasks(_train, {n: (*t, False) for n, t in todo.items()}, jobs, threads,
                             show)
    for path in paths:
        write_episodes(path)
    failed = [name for name, (status, _) in outcomes.items() if status == FAILED]
    if failed:
        raise GridError(f"{len(failed)} of {len(configs)} runs failed: {', '.join(failed)} "
                        f"(reasons above); the others are done, and a rerun retries these")
    return paths


def check_jobs(jobs: int) -> None:
    """Refuse a number of worker processes outside 1 … 4 × this machine's cores."""
    limit = 4 * (os.cpu_count() or 1)
    if not isinstance(jobs, int) or not 1 <= jobs <= limit:
        raise ConfigError(f"--jobs {jobs}: must be an integer from 1 to {limit} "
                          f"(4 × this machine's {os.cpu_count() or 1} cores)")


def _train(name: str, config: dict[str, Any], path: str, resume: bool,
           progress: bool) -> tuple[str, str]:
    """Train one run of a grid (in this process or a worker's, so it takes and returns plain
    data): (DONE, ""), (DIVERGED, why) or (FAILED, why in one line; a traceback on stderr
    where the error is not a :class:`~rabo.errors.RaboError`, i.e. a bug)."""
    try:
        run(build(RunConfig(**config)), Path(path), progress=progress, resume=resume)
    except DivergedError as err:
        return DIVERGED, str(err)
    except RaboError as err:
        return FAILED, str(err)
    except Exception as err:  # noqa: BLE001 - a bug in one run: reported, the grid goes on
        traceback.print_exc()
        return FAILED, f"{type(err).__name__}: {err}"
    return DONE, ""


class _GridProgress:
    """The grid's lines on stderr: each run started and done (with ``progress``), diverged or
    failed (always), named, with how far the grid is."""

    def __init__(self, total: int, progress: bool):
        self.total, self.progress = total, progress
        self.began: dict[str, float] = {}
        self.ended = 0

    def __call__(self, name: str, event: str, outcome: tuple[str, str] | None = None) -> None:
        if event == STARTED:
            self.began[name] = time.monotonic()
            line = f"started ({len(self.began)} of {self.total})"
        else:
            self.ended += 1
            status, why = outcome or (FAILED, "")
            line = {DONE: f"done in {time.monotonic() - self.began[name]:.1f} s "
                          f"({self.ended} of {self.total})",
                    DIVERGED: why, FAILED: f"failed: {why}"}[status]
        if self.progress or outcome and outcome[0] != DONE:
            print(f"rabo reproduce: {name}: {line}", file=sys.stderr, flush=True)


def finished(path: Path, rounds: int) -> bool:
    """Whether the run in ``path`` needs no more training: it has final.safetensors, or its
    metrics.jsonl holds rounds 1 … ``rounds`` (a round's row is written after its evaluation,
    so the last row holds the final accuracy: no model file is needed to rebuild the tables),
    or it stopped at a round that diverged (every update NaN or Inf: the run ends there)."""
    if (path / "final.safetensors").exists():
        return True
    rows = checkpoint.read_metrics(path / "metrics.jsonl")
    if not rows or [r.get("round") for r in rows] != list(range(1, len(rows) + 1)):
        return False
    return len(rows) == rounds or divergence(rows[-1]) is not None


def write_episodes(path: Path) -> Path | None:
    """``episodes.csv`` (episode 1…E, accuracy) of the final evaluation's per-episode accuracies
    (metrics.jsonl's last row), so a run's evidence is plain text; None where it logged none."""
    rows = checkpoint.read_metrics(path / "metrics.jsonl")
    accuracies = rows[-1].get("episode_accuracies") if rows else None
    if not accuracies:
        return None
    return write_csv([{"episode": e, "accuracy": a} for e, a in enumerate(accuracies, 1)],
                     ["episode", "accuracy"], path / "episodes.csv")


# fields that change how fast a run goes, not its results
RUNTIME_FIELDS = ("threads", "device", "batch_clients", "checkpoint_every")


def _check_reusable(path: Path, config: RunConfig) -> None:
    """A finished run is reused, an unfinished one resumed or restarted, only if it ran with
    ``config`` (up to :data:`RUNTIME_FIELDS`; :func:`~rabo.config.differing_keys`), so a
    changed config file never silently reuses old results, nor overwrites them; the refusal
    names the first differing key (a problem or policy option by its flat name)."""
    saved = json.loads((path / "config.json").read_text())
    now = json.loads(json.dumps(config.to_dict()))
    differ = differing_keys(saved, now, RUNTIME_FIELDS)
    if differ:
        key = differ[0]
        was, wanted = flat_config(saved).get(key), flat_config(now).get(key)
        raise ConfigError(f"{path} holds a run with {key}={was!r}, not {wanted!r}: give the "
                          f"options it was made with (--quick, --config, --set, --data-dir, "
                          f"--validate as then), or another --out")


def cost_table(paths: list[Path], reference: str = "fedmbo") -> list[dict[str, Any]]:
    """Final and best accuracy (with the final 95 % interval where logged), and total FLOPs and
    bytes relative to ``reference``'s run of the same seed (None without one)."""
    runs = load_runs(paths)
    rows = [summarize(r) | {"accuracy_ci95": _last(r, "accuracy_ci95"),
                            "seed": r.config.get("seed")} for r in runs]
    bases = {r["seed"]: r for r in reversed(rows) if r["method"] == reference}
    for r in rows:
        base = bases.get(r["seed"])
        r["flops_ratio"] = r["gflops"] / base["gflops"] if base and base["gflops"] else None
        r["bytes_ratio"] = r["mb"] / base["mb"] if base and base["mb"] else None
    return rows


def _last(run: Run, key: str) -> Any:
    return next((row[key] for row in reversed(run.rows) if row.get(key) is not None), None)


def fig6(out: Path, data_dir: str | None, dataset: str = "fashion-mnist", quick: bool = False,
         seed: int = 0, progress: bool = True, settings: list[str] | None = None,
         config: Path | None = None, validate: bool = False, seeds: int = 1, jobs: int = 1,
         train: bool = True, methods: list[str] | None = None,
         sets: dict[str, str] | None = None) -> list[Path]:
    """Fig. 6: balanced test accuracy against rounds for every method on long-tailed data, runs
    in ``out/<dataset>/<method>``; the table's rows are the methods, its one column the data
    set, and the ordering the paper's (FedMBO ≥ RABO ≥ each single-level baseline, RAFBO too)."""
    if validate:
        raise ConfigError("--validate is for the few-shot experiments (table2, table3, fig4); "
                          "fig6's step sizes were chosen on the clients' validation splits")
    if settings or config:
        raise ConfigError("fig6 takes neither --settings nor --config")
    base = RunConfig(problem="losstuning", clients=10, capacities=[0.5], seed=seed,
                     data_dir=data_dir, problem_options={"dataset": dataset},
                     **FIG6_STEPS.get(dataset, {}))
    if quick:
        base = dataclasses.replace(base, rounds=3, eval_every=1)
    grid = {dataset: {m: dataclasses.replace(base, method=m) for m in FIG6_METHODS}}
    ordering = tuple(pair for pair in ORDERING if set(pair) <= set(FIG6_METHODS))
    return seeded_table(out, "fig6", grid, "method", progress, ordering, seeds, jobs, train,
                        methods=methods, sets=sets)


# --- few-shot on Omniglot (paper V-A) ------------------------------------------------------------
def fewshot_base(data_dir: str | None, quick: bool, seed: int, config: Path | None,
                 validate: bool = False) -> tuple[RunConfig, ConfigFile]:
    """10 clients at the paper's capacities, then the config file's base keys (default: the
    packaged ``rabo/configs/fewshot.toml``), then the quick overrides; with ``validate``,
    evaluation on held-out training alphabets (for tuning). Returns the base config and the
    file, whose ``[setting.NwKs]`` and ``[method.NAME]`` tables :func:`setting` applies per
    run."""
    base = RunConfig(problem="fewshot", clients=10, capacities=list(PAPER_CAPACITIES), seed=seed,
                     data_dir=data_dir)
    file = read_config(config) if config is not None else packaged_config("fewshot")
    base = apply(base, file.base, FEWSHOT_OPTIONS)
    if quick:
        base = apply(base, QUICK_FEWSHOT, FEWSHOT_OPTIONS)
    if validate:
        base.problem_options["validate"] = True
    base.seed = seed
    base.data_dir = data_dir or base.data_dir
    return base, file


def setting(base: RunConfig, name: str, file: ConfigFile | None = None,
            **changes: Any) -> RunConfig:
    """``base`` in setting ``name`` ("5w1s": 5-way 1-shot), with other fields changed, then the
    config file's ``[setting.NAME]`` and ``[method.NAME]`` tables for this run."""
    if name not in SETTINGS:
        raise UnknownNameError("few-shot setting", name, SETTINGS)
    ways, shots = SETTINGS[name]
    changes = {"policy_options": dict(base.policy_options), **changes}
    config = dataclasses.replace(base, problem_options={**base.problem_options, "ways": ways,
                                                        "shots": shots}, **changes)
    for values in (file or ConfigFile()).tables(config.method, ways, shots):
        config = apply(config, values, FEWSHOT_OPTIONS)
    return config


def accuracy_summary(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """Final accuracy and its 95 % half-width: one run's own interval over its test episodes;
    over several seeds, the seeds' mean and t-interval (:func:`seed_interval`); (None, None)
    where some run logged no final accuracy."""
    accs = [r.get("final_accuracy") for r in rows]
    if not accs or any(a is None for a in accs):
        return None, None
    return seed_interval(accs) if len(rows) > 1 else (accs[0], rows[0].get("accuracy_ci95"))


def accuracy_cell(rows: list[dict[str, Any]]) -> str:
    """A table cell in %: :func:`accuracy_summary`'s "mean ± ci95" (the mean alone where no
    interval was logged), "(n seeds)" after it where the interval is over seeds; — without a
    mean."""
    mean, ci = accuracy_summary(rows)
    if mean is None:
        return "—"
    cell = f"{100 * mean:.2f}" + ("" if ci is None else f" ± {100 * ci:.2f}")
    return cell + (f" ({len(rows)} seeds)" if len(rows) > 1 else "")


def seed_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % half-width t_{.975, n−1}·sd/√n of n ≥ 2 per-seed values: training noise
    (data order, client draws) and the seeds' different test episodes, which one run's episode
    interval does not see."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def seed_runs(name: str, config: RunConfig, seeds: int) -> dict[str, RunConfig]:
    """Run ``name`` at ``seeds`` consecutive seeds from its own: the first keeps ``name`` (so a
    one-seed output directory stays valid), the others are ``name-seedS``."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds {seeds}: must be an integer from 1 to {MAX_SEEDS}")
    runs = {}
    for s in range(config.seed, config.seed + seeds):
        seeded = copy.deepcopy(config)
        seeded.seed = s
        runs[name if s == config.seed else f"{name}-seed{s}"] = seeded
    return runs


def seeds_found(path: Path, name: str, config: RunConfig) -> int:
    """How many consecutive seeds of run ``name`` (:func:`seed_runs`) have a directory in
    ``path`` (at least 1), so that a setting tabulated without training keeps the seeds its
    runs were made at, whatever ``--seeds`` the setting asked for says."""
    n = 1
    while n < MAX_SEEDS and (path / f"{name}-seed{config.seed + n}").is_dir():
        n += 1
    return n


# what an experiment sets by its own flags, not by --set
OWN_KEYS = {"problem": "the experiment's problem",
            "method": "each run's; choose runs with --methods", "seed": "give --seed and --seeds",
            "problem.ways": "give --settings", "problem.shots": "give --settings",
            "problem.dataset": "give --dataset"}


def with_sets(grid: dict[str, dict[str, RunConfig]], sets: dict[str, str],
              stem: str) -> dict[str, dict[str, RunConfig]]:
    """``grid`` with every run's ``--set KEY=VALUE`` pairs set last, over the experiment's own
    settings and config file (so they win, as in ``rabo run``); its run directories' config.json
    record them, so a rerun or ``--tables-only`` over them needs the same pairs. Refused: a key
    the experiment sets by its own flags (:data:`OWN_KEYS`), and one it varies between the runs
    of one method in one setting (Table III's ``clients``; Fig. 4's ``capacities``, ``policy``
    and ``policy.segments``), which one value for all would erase."""
    if not sets:
        return grid
    for key in sets:
        if key in OWN_KEYS:
            raise ConfigError(f"--set {key}: {stem} sets {key} itself ({OWN_KEYS[key]})")
        for name, configs in grid.items():
            values: dict[str, set[str]] = {}
            for c in configs.values():
                value = flat_config(c.to_dict()).get(key)
                values.setdefault(c.method, set()).add(json.dumps(value, sort_keys=True))
            varied = [m for m, v in values.items() if len(v) > 1]
            if varied:
                raise ConfigError(f"--set {key}: {stem} varies {key} between its {varied[0]} "
                                  f"runs in {name}; one value for all of them would erase that")
    return {name: {run: apply(c, sets, {k: type(v) for k, v in
                                        get_problem(c.problem).options.items()})
                   for run, c in configs.items()} for name, configs in grid.items()}


def difference(a: list[Run], b: list[Run]) -> dict[str, Any]:
    """Final accuracy of ``a`` minus ``b`` (the same run at one or more seeds each), in points,
    with a 95 % interval and how it pairs: over several seeds, the per-seed differences' mean ±
    :func:`seed_interval` ("seeds"); for one run each, paired over the E test episodes both
    evaluated, 1.96·sd(a_e − b_e)/√E, where both logged ``episode_accuracies`` (every few-shot
    run of a seed sees the same episodes: "episodes"), otherwise from the two runs' own intervals
    as independent samples, √(ci_a² + ci_b²) ("none")."""
    acc_a, acc_b = [_last(r, "accuracy") for r in a], [_last(r, "accuracy") for r in b]
    if not a or None in acc_a or None in acc_b or len(a) != len(b):
        return {"difference": None, "ci95": None, "pairing": None, "holds": None,
                "within_noise": None, "verdict": None}
    ea, eb = _last(a[0], "episode_accuracies"), _last(b[0], "episode_accuracies")
    if len(a) > 1:
        diff, ci = seed_interval([100 * (x - y) for x, y in zip(acc_a, acc_b)])
        pairing = "seeds"
    elif ea is not None and eb is not None and len(ea) == len(eb) > 1:
        d = 100 * (np.asarray(ea) - np.asarray(eb))
        diff, ci = float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))
        pairing = "episodes"
    else:
        diff, pairing = 100 * (acc_a[0] - acc_b[0]), "none"
        ci_a, ci_b = _last(a[0], "accuracy_ci95"), _last(b[0], "accuracy_ci95")
        ci = None if ci_a is None or ci_b is None else 100 * float(np.hypot(ci_a, ci_b))
    within = None if ci is None else abs(diff) <= ci
    return {"difference": diff, "ci95": ci, "pairing": pairing, "holds": diff >= 0,
            "within_noise": within, "verdict": verdict(diff, within)}


def verdict(diff: float, within_noise: bool | None) -> str:
    """An ordering (first expected ≥ second) in a word: "holds" outside its 95 % interval,
    "tie" inside it, "fails" below it; "holds?"/"fails?" by the sign alone without an interval
    (one run each and no logged interval)."""
    if within_noise is None:
        return "holds?" if diff >= 0 else "fails?"
    if within_noise:
        return "tie"
    return "holds" if diff >= 0 else "fails"


def seeded_table(out: Path, stem: str, grid: dict[str, dict[str, RunConfig]], row_key: str,
                 progress: bool, ordering: tuple[tuple[str, str], ...] = (),
                 seeds: int = 1, jobs: int = 1, train: bool = True,
                 tabulate_only: frozenset[str] = frozenset(),
                 methods: list[str] | None = None,
                 place: Callable[[str, str], tuple[str, str]] | None = None,
                 sets: dict[str, str] | None = None) -> list[Path]:
    """Run ``grid`` (setting → run name → config) at ``seeds`` seeds (:func:`seed_runs`) into
    ``out/<setting>/<run>``; write ``stem``.csv (one row per setting and run: seeds, ``mean``
    and ``ci95`` of the final accuracy as fractions, :func:`accuracy_summary`, the fewest rounds
    any seed ran, the seeds' mean cost relative to FedMBO and the fewest clients that kept a
    channel in any round), ``stem``_runs.csv (one row per run and seed: accuracy, interval,
    cost), ``stem``.md ("acc ± ci95" in %; rows: runs, columns: settings, or the row and column
    ``place(setting, run)`` gives) and an
    accuracy-vs-round plot per setting (first seed); with ``ordering`` (pairs of run names,
    first expected ≥ second), ``stem``_ordering.csv/.md: each pair's :func:`difference` per
    setting over the seeds both finished. Everything is computed from the runs' text files, so
    a rerun over finished runs writes the same bytes. With ``train`` False nothing trains: the
    tables hold the finished runs (a cell's ``seeds`` is how many finished; a cell or setting
    with none is left out); so it is for the settings in ``tabulate_only``
    (:func:`fewshot_settings`), and one of those whose runs were made with another config is
    left out with a line on stderr; such a setting is tabulated at the seeds its runs were
    made at (:func:`seeds_found`), not at ``seeds``. With ``methods``, only those methods' runs
    train; the others' finished runs are tabulated all the same. ``sets``: :func:`with_sets`."""
    grid = with_sets(grid, sets or {}, stem)
    known = list(dict.fromkeys(c.method for configs in grid.values() for c in configs.values()))
    for method in methods or ():
        if method not in known:
            raise UnknownNameError(f"{stem} method", method, known)
    out.mkdir(parents=True, exist_ok=True)
    rows, summary, files, checks = [], [], [], []
    wide: dict[str, dict[str, str]] = {}
    place = place or (lambda setting, run: (run, setting))
    for name, configs in grid.items():
        flat = {f"{name}/{d}": (run_name, c) for run_name, config in configs.items()
                for d, c in seed_runs(run_name, config, seeds if name not in tabulate_only
                                      else seeds_found(out / name, run_name, config)).items()}
        try:
            paths = run_grid({d: c for d, (_, c) in flat.items()}, out, progress, jobs,
                             train and name not in tabulate_only,
                             frozenset(d for d, (_, c) in flat.items()
                                       if methods and c.method not in methods))
        except ConfigError as err:
            if name not in tabulate_only:
                raise
            print(f"rabo reproduce: setting {name} left out of the tables: {err}",
                  file=sys.stderr, flush=True)
            continue
        if not paths:         # nothing finished (with ``train`` False): no rows, no ordering
            continue
        done = [flat[f"{name}/{p.name}"] for p in paths]
        table = cost_table(paths)
        runs: dict[str, dict[int, Run]] = {r: {} for r in configs}
        for (run_name, c), row, loaded in zip(done, table, load_runs(paths)):
            row.update({"setting": name, row_key: run_name, "seed": c.seed})
            runs[run_name][c.seed] = loaded
        rows += table
        for r in configs:
            cells = [row for row in table if row[row_key] == r]
            if not cells:
                continue
            mean, ci = accuracy_summary(cells)
            summary.append({"setting": name, row_key: r, "method": cells[0]["method"],
                            "seeds": len(cells), "mean": mean, "ci95": ci,
                            "rounds": min(row["rounds"] for row in cells),
                            "flops_ratio": _mean([row["flops_ratio"] for row in cells]),
                            "bytes_ratio": _mean([row["bytes_ratio"] for row in cells]),
                            "min_channel_cover_x": _least(row["min_channel_cover_x"]
                                                          for row in cells)})
            row, column = place(name, r)
            wide.setdefault(row, {row_key: row})[column] = accuracy_cell(cells)
        png = out / f"{stem}_{name}_accuracy.png"
        if plot([next(iter(rs.values())) for rs in runs.values() if rs],
                [("accuracy", f"{name} test accuracy", False)], "rounds", png,
                dashed=REFERENCES):
            files.append(png)
        for a, b in ordering:
            common = sorted(set(runs[a]) & set(runs[b]))
            checks.append({"setting": name, "comparison": f"{a} − {b}"}
                          | difference([runs[a][s] for s in common],
                                       [runs[b][s] for s in common]))
    if not rows:
        raise GridError(f"no finished {stem} runs in {str(out)!r} to tabulate (--tables-only "
                        f"reads the --out a reproduction ran into, with its --data-dir)")
    files.append(write_csv(summary, list(dict.fromkeys(["setting", row_key, "method"])) + [
        "seeds", "mean", "ci95", "rounds", "flops_ratio", "bytes_ratio", "min_channel_cover_x"],
        out / f"{stem}.csv"))
    columns = list(dict.fromkeys([row_key, "setting", "method"])) + [
        "seed", "rounds", "final_accuracy", "accuracy_ci95", "best_accuracy", "flops_ratio",
        "bytes_ratio", "gflops", "mb", "min_channel_cover_x", "wall_seconds"]
    files.append(write_csv(rows, columns, out / f"{stem}_runs.csv"))
    columns = dict.fromkeys(c for cells in wide.values() for c in cells if c != row_key)
    files.append(write_markdown(list(wide.values()), [row_key, *columns], out / f"{stem}.md"))
    if checks:
        files += write_table(checks, ["setting", "comparison", "difference", "ci95", "pairing",
                                      "holds", "within_noise", "verdict"], out,
                             f"{stem}_ordering")
    return files


def _mean(values: list[float | None]) -> float | None:
    """The mean of ``values``, None if any is None."""
    return None if not values or None in values else float(np.mean(values))


def _least(values: Any) -> Any:
    """The smallest of ``values`` that are not None (None if none is)."""
    return min((v for v in values if v is not None), default=None)


def fewshot_settings(out: Path, asked: list[str] | None,
                     default: tuple[str, ...]) -> tuple[list[str], frozenset[str]]:
    """The settings a few-shot reproduction tabulates, in :data:`SETTINGS`' order: those asked
    for (or ``default``) and every other setting with a directory in ``out``, tabulated from
    its finished runs without training (the second value), so that rerunning one setting keeps
    the others' rows in ``out``'s tables, and the tables do not depend on how it was asked."""
    asked = list(asked or default)
    for name in asked:
        if name not in SETTINGS:
            raise UnknownNameError("few-shot setting", name, SETTINGS)
    names = [s for s in SETTINGS if s in asked or (out / s).is_dir()]
    return names, frozenset(s for s in names if s not in asked)


def table2(out: Path, data_dir: str | None, dataset: str | None = None, quick: bool = False,
           seed: int = 0, progress: bool = True, settings: list[str] | None = None,
           config: Path | None = None, validate: bool = False, seeds: int = 1,
           jobs: int = 1, train: bool = True,
           methods: list[str] | None = None, sets: dict[str, str] | None = None) -> list[Path]:
    """Table II: every few-shot method in every setting, 10 clients, mixed capacities."""
    base, file = fewshot_base(data_dir, quick, seed, config, validate)
    names, others = fewshot_settings(out, settings, tuple(SETTINGS))
    grid = {s: {m: setting(base, s, file, method=m) for m in FEWSHOT_METHODS} for s in names}
    return seeded_table(out, "table2", grid, "method", progress, ORDERING, seeds, jobs, train,
                        others, methods, sets=sets)


def table3(out: Path, data_dir: str | None, dataset: str | None = None, quick: bool = False,
           seed: int = 0, progress: bool = True, settings: list[str] | None = None,
           config: Path | None = None, validate: bool = False, seeds: int = 1,
           jobs: int = 1, train: bool = True,
           methods: list[str] | None = None, sets: dict[str, str] | None = None) -> list[Path]:
    """Table III: RABO and RAFBO (and their importance-cover variants) as the number of clients
    grows (the paper's capacities in equal blocks); ordering: each method with fewer clients ≥
    with the next more (the paper's "as the number of clients increasing, the performance
    decreases"), then ours: each cover variant ≥ the paper's method at the same number of
    clients (its minimum cover grows with the clients: rabo/masks/importance_cover.py)."""
    base, file = fewshot_base(data_dir, quick, seed, config, validate)
    names, others = fewshot_settings(out, settings, ("5w1s", "5w5s"))
    grid = {s: {f"{m}-M{n}": setting(base, s, file, method=m, clients=n)
                for m in TABLE3_METHODS for n in TABLE3_CLIENTS} for s in names}

    def place(setting: str, run: str) -> tuple[str, str]:       # the paper's layout
        method, clients = run.rsplit("-M", 1)
        return f"{setting} {method}", f"{clients} clients"
    fewer_first = tuple((f"{m}-M{a}", f"{m}-M{b}") for m in TABLE3_METHODS
                        for a, b in itertools.pairwise(TABLE3_CLIENTS))
    cover_first = tuple((f"{c}-M{n}", f"{m}-M{n}") for c, m in COVER_OVER_PAPER
                        for n in TABLE3_CLIENTS)
    return seeded_table(out, "table3", grid, "run", progress, fewer_first + cover_first, seeds,
                        jobs, train, others, methods, place, sets)


def fig4(out: Path, data_dir: str | None, dataset: str | None = None, quick: bool = False,
         seed: int = 0, progress: bool = True, settings: list[str] | None = None,
         config: Path | None = None, validate: bool = False, seeds: int = 1, jobs: int = 1,
         train: bool = True, methods: list[str] | None = None,
         sets: dict[str, str] | None = None) -> list[Path]:
    """Fig. 4 (the paper's, at 5w5s): (a) computation and communication of RABO and RAFBO
    relative to FedMBO (the same runs as Table II's, so an ``out`` shared with it reuses them);
    (b) RABO's and RAFBO's accuracy with C_x = 1 versus C_x = 5 at half width for every client
    (ordering: cx5 ≥ cx1)."""
    base, file = fewshot_base(data_dir, quick, seed, config, validate)
    names, others = fewshot_settings(out, settings, ("5w5s",))
    grid = {s: {m: setting(base, s, file, method=m) for m in ("fedmbo", "rabo", "rafbo")}
            | {f"{m}-{name}": setting(base, s, file, method=m, capacities=[0.5],
                                      policy="segments", policy_options={"segments": segments})
               for m in ("rabo", "rafbo") for name, segments in CX_SEGMENTS.items()}
            for s in names}
    ordering = (("rabo-cx5", "rabo-cx1"), ("rafbo-cx5", "rafbo-cx1"))
    files = seeded_table(out, "fig4", grid, "run", progress, ordering, seeds, jobs, train,
                         others, methods, sets=sets)
    summary = read_csv(out / "fig4.csv")
    for s in grid:
        cost = [r for r in summary if r["setting"] == s and r["run"] in ("fedmbo", "rabo",
                                                                         "rafbo")]
        if cost:
            files.append(out / f"fig4_cost_{s}.png")
            bars(cost, [("flops_ratio", "computation / FedMBO"),
                        ("bytes_ratio", "communication / FedMBO")], files[-1])
    return files


EXPERIMENTS = {"fig6": fig6, "table2": table2, "table3": table3, "fig4": fig4}
