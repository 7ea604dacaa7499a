"""`rabo bench`'s ``table2-5w1s`` estimate (issue 24): how long one 5-way 1-shot column of
``rabo reproduce table2`` takes on this machine, from each method's measured round and
evaluation times and the reproduction's own settings (the packaged ``configs/fewshot.toml``
through :func:`rabo.reproduce.setting`), so the README's run-time figures come from one
command."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from typing import Any

from ..accounting import FlopCache
from ..config import RunConfig
from ..experiment import build
from ..problems.fewshot import EVAL_CHUNK
from ..reproduce import FEWSHOT_METHODS, fewshot_base, setting
from ..rounds import RunState
from ..runtime.simulate import simulate_round
from ..tables import markdown
from .roofline import timed

SETTING = "5w1s"


def column_configs(seed: int = 0, data_dir: str | None = None) -> dict[str, RunConfig]:
    """Every Table II method's config at :data:`SETTING`, as ``rabo reproduce table2`` runs it
    (synthetic episodes of the same shapes without ``data_dir``)."""
    base, file = fewshot_base(data_dir, quick=False, seed=seed, config=None)
    if data_dir is None:
        base.problem_options["source"] = "synthetic"
    return {m: setting(base, SETTING, file, method=m) for m in FEWSHOT_METHODS}


def evaluations(config: RunConfig) -> tuple[int, int]:
    """(evaluation rounds before the last, test episodes in all) of a run of ``config``: every
    ``eval_every`` rounds ``eval_episodes``, on the last round ``final_episodes`` instead."""
    rounds, every = int(config.rounds), int(config.eval_every)
    before_last = (rounds - 1) // every
    opts = config.problem_options
    return before_last, before_last * int(opts["eval_episodes"]) + int(opts["final_episodes"])


def method_times(config: RunConfig, rounds: int, warmup: int, device: str,
                 episode_seconds: dict[str, float]) -> dict[str, Any]:
    """One method's median seconds per round (``warmup`` + ``rounds`` rounds from its initial
    model) and per test episode (:meth:`FewShot.episode_accuracies` on ``EVAL_CHUNK`` episodes
    after the timed rounds; methods with the same problem options share one measurement, kept
    in ``episode_seconds``), and the run time they give at the configured rounds."""
    exp = build(dataclasses.replace(config, device=device))
    state, cache = RunState(*exp.problem.init_params(config.seed)), FlopCache()
    times = [timed(lambda: simulate_round(exp, state, cache, evaluate=False), device)[0]
             for _ in range(warmup + rounds)][warmup:]
    kind = json.dumps(exp.config.problem_options, sort_keys=True)
    if kind not in episode_seconds:
        problem = exp.problem
        x, y = ({n: t.to(device) for n, t in p.items()} for p in (state.x, state.y))
        tasks = [{n: t.to(device) for n, t in task.items()}
                 for task in problem.test_tasks(EVAL_CHUNK, config.seed)]
        episode_seconds[kind] = timed(lambda: problem.episode_accuracies(x, y, tasks),
                                      device)[0] / EVAL_CHUNK
    round_s, episode_s = statistics.median(times), episode_seconds[kind]
    evals, episodes = evaluations(config)
    return {"method": config.method, "rounds": int(config.rounds), "round_seconds": round_s,
            "evaluation_rounds": evals + 1, "test_episodes": episodes,
            "episode_seconds": episode_s, "train_seconds": round_s * int(config.rounds),
            "eval_seconds": episode_s * episodes,
            "run_seconds": round_s * int(config.rounds) + episode_s * episodes}


def table2_estimate(seed: int = 0, data_dir: str | None = None, rounds: int = 1,
                    warmup: int = 1, device: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``table2-5w1s``: :func:`method_times` for every method of :func:`column_configs`, and
    the column's total (its runs one after another, one process)."""
    say = progress or (lambda _: None)
    episode_seconds: dict[str, float] = {}
    rows = []
    for method, config in column_configs(seed, data_dir).items():
        say(f"table2-{SETTING}: {method}, {warmup} + {rounds} rounds and {EVAL_CHUNK} test "
            f"episodes")
        rows.append(method_times(config, rounds, warmup, device, episode_seconds))
    total = sum(r["run_seconds"] for r in rows)
    return {"workload": f"table2-{SETTING}", "setting": SETTING,
            "source": "omniglot" if data_dir else "synthetic", "device": device,
            "rounds_timed": rounds, "warmup": warmup, "methods": rows,
            "total_seconds": total, "total_hours": total / 3600}


def format_estimate(estimate: dict[str, Any]) -> list[str]:
    """The estimate as Markdown lines: one row per method, then the column's total."""
    columns = ("method", "s/round", "rounds", "s/test episode", "test episodes", "train min",
               "eval min", "run min")
    rows = ([r["method"], f"{r['round_seconds']:.2f}", str(r["rounds"]),
             f"{r['episode_seconds']:.3f}", str(r["test_episodes"]),
             f"{r['train_seconds'] / 60:.1f}", f"{r['eval_seconds'] / 60:.1f}",
             f"{r['run_seconds'] / 60:.1f}"] for r in estimate["methods"])
    lines = ["", *markdown(columns, rows)]
    lines.append(f"\n{estimate['workload']} ({estimate['source']}): "
                 f"{len(estimate['methods'])} runs one after another, "
                 f"{estimate['total_seconds'] / 60:.0f} min ({estimate['total_hours']:.2f} h)")
    return lines
