"""The in-process simulator: M clients over T rounds, one process, calling the same client and
server steps as the Flower app."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import client, server
from ..accounting import FlopCache, message_bytes, nbytes, shape_key
from ..experiment import Experiment
from ..submodel import Params


@dataclass
class RunState:
    """Server state between rounds: full-size x^t, y^t and the next round t."""

    x: Params
    y: Params
    round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PhaseResult:
    """What one phase of all clients returns to the server, and what it cost."""

    deltas: list[Params]
    losses: list[float]
    flops: int = 0
    bytes_down: int = 0
    bytes_up: int = 0


def run_phase(exp: Experiment, phase: str, x: Params, y: Params,
              indices: list, round: int, flops: FlopCache) -> PhaseResult:
    """Every client runs its ``phase`` step on its extracted submodel; costs are counted."""
    problem, plan, seed = exp.problem, exp.problem.plan, exp.config.seed
    step = client.inner_phase if phase == "inner" else client.outer_phase
    result = PhaseResult([], [])
    for i, index in enumerate(indices):
        xs, ys = plan.extract(x, index), plan.extract(y, index)
        (delta, m), fl = flops.run(
            (phase, problem.cost_key(i), shape_key(xs), shape_key(ys)),
            partial(step, problem, xs, ys, index, i, round, exp.settings, seed))
        result.deltas.append(delta)
        result.losses.append(m[f"{phase}_loss"])
        result.flops += fl
        result.bytes_down += message_bytes(plan, phase, xs, ys, index)
        result.bytes_up += nbytes(delta)
    return result


def simulate_round(exp: Experiment, state: RunState, flops: FlopCache) -> dict[str, Any]:
    """One round of Algorithm 1 for every client; updates ``state`` and returns its metrics."""
    start = time.perf_counter()
    cfg, problem, plan = exp.config, exp.problem, exp.problem.plan
    t, x, y = state.round, state.x, state.y
    capacities = exp.schedule.at(t)
    indices = server.round_masks(exp.policy, plan, x, y, capacities, t, cfg.seed)

    inner = run_phase(exp, "inner", x, y, indices, t, flops)
    y, cover_y = server.server_update(plan, y, indices, inner.deltas)
    outer = PhaseResult([], [])
    if exp.tunes_x:
        outer = run_phase(exp, "outer", x, y, indices, t, flops)
        x, cover_x = server.server_update(plan, x, indices, outer.deltas)
    else:
        cover_x = server.cover_stats(server.cover_counts(plan, x, []))

    state.x, state.y, state.round = x, y, t + 1
    metrics: dict[str, Any] = {
        "round": t + 1, "method": cfg.method,
        "inner_loss": _mean(inner.losses), "outer_loss": _mean(outer.losses),
        "cover_x": cover_x.minimum, "cover_y": cover_y.minimum,
        "uncovered_x": cover_x.uncovered, "uncovered_y": cover_y.uncovered,
        "flops": inner.flops + outer.flops, "flops_inner": inner.flops,
        "flops_outer": outer.flops, "bytes_down": inner.bytes_down + outer.bytes_down,
        "bytes_up": inner.bytes_up + outer.bytes_up, "capacities": capacities,
    }
    metrics.update(problem.round_metrics(x, y))
    if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
        metrics.update(problem.evaluate(x, y))
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats are written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def run(exp: Experiment, out: Path | None = None, progress: bool = True) -> RunState:
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round, flushed)
    and the final parameters (final.safetensors)."""
    from tqdm import tqdm

    cfg = exp.config
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    x, y = exp.problem.init_params(cfg.seed)
    state = RunState(x, y)
    flops = FlopCache()
    metrics_file = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        metrics_file = open(out / "metrics.jsonl", "w")  # noqa: SIM115 (closed in finally)
    shown: dict[str, str] = {}
    bar = tqdm(total=cfg.rounds, disable=not progress, desc=f"{cfg.method} on {cfg.problem}",
               unit="round", dynamic_ncols=True)
    try:
        while state.round < cfg.rounds:
            metrics = _clean(simulate_round(exp, state, flops))
            state.history.append(metrics)
            if metrics_file:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
            shown.update({k: f"{metrics[k]:.4g}" for k in
                          ("inner_loss", "outer_loss", "accuracy", "hypergrad_norm")
                          if metrics.get(k) is not None})
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    if out is not None:
        save_file({f"x.{n}": p.contiguous() for n, p in state.x.items()}
                  | {f"y.{n}": p.contiguous() for n, p in state.y.items()},
                  str(out / "final.safetensors"))
    return state
