"""The in-process simulator: M clients over T rounds, one process, calling the same client and
server steps as the Flower app."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import checkpoint, client, server
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


def run_phase(exp: Experiment, phase: str, x: Params, y: Params, clients: list[int],
              indices: list, round: int, flops: FlopCache) -> PhaseResult:
    """Each client in ``clients`` runs its ``phase`` step on its extracted submodel; costs are
    counted."""
    problem, plan, seed = exp.problem, exp.problem.plan, exp.config.seed
    step = client.inner_phase if phase == "inner" else client.outer_phase
    result = PhaseResult([], [])
    for i, index in zip(clients, indices, strict=True):
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


def accepted(clients: list[int], indices: list, result: PhaseResult,
             rejected: list[int]) -> tuple[list, list[Params]]:
    """The (index, Δ) pairs to aggregate: updates with NaN or Inf are rejected (and logged)."""
    keep = []
    for i, index, delta in zip(clients, indices, result.deltas):
        if server.is_finite(delta):
            keep.append((index, delta))
        elif i not in rejected:
            rejected.append(i)
    return [k[0] for k in keep], [k[1] for k in keep]


def simulate_round(exp: Experiment, state: RunState, flops: FlopCache,
                   clients: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """One round of Algorithm 1; updates ``state`` and returns its metrics. ``clients`` =
    (participants, failed) overrides the seeded draw of :func:`server.participants`."""
    start = time.perf_counter()
    cfg, problem, plan = exp.config, exp.problem, exp.problem.plan
    t, x, y = state.round, state.x, state.y
    capacities = exp.schedule.at(t)
    chosen, failed = clients or server.participants(cfg.clients, cfg.participation,
                                                     cfg.fail_prob, cfg.seed, t)
    alive = [i for i in chosen if i not in failed]
    indices = server.round_masks(exp.policy, plan, x, y, [capacities[i] for i in alive], t,
                                 cfg.seed)
    rejected: list[int] = []
    inner = run_phase(exp, "inner", x, y, alive, indices, t, flops)
    y, cover_y = server.server_update(plan, y, *accepted(alive, indices, inner, rejected))
    outer = PhaseResult([], [])
    if exp.tunes_x:
        outer = run_phase(exp, "outer", x, y, alive, indices, t, flops)
        x, cover_x = server.server_update(plan, x, *accepted(alive, indices, outer, rejected))
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
        "bytes_up": inner.bytes_up + outer.bytes_up,
        "capacities": [capacities[i] for i in alive], "clients": alive, "failed": failed,
        "rejected": sorted(rejected),
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


def run(exp: Experiment, out: Path | None = None, progress: bool = True,
        resume: bool = False) -> RunState:
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round, flushed),
    a checkpoint every ``checkpoint_every`` rounds and at the end, and final.safetensors.
    Progress is a bar on a terminal, a plain line per evaluation round otherwise.
    ``resume`` continues from ``out``'s checkpoint; Ctrl-C checkpoints the last round first."""
    from tqdm import tqdm

    cfg = exp.config
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if resume:
        assert out is not None
        x, y, done, _ = checkpoint.load(out, exp.problem.init_params(cfg.seed))
        state = RunState(x, y, done, checkpoint.truncate_metrics(out / "metrics.jsonl", done))
    else:
        state = RunState(*exp.problem.init_params(cfg.seed))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            (out / "metrics.jsonl").write_text("")
    flops = FlopCache()
    shown: dict[str, str] = {}
    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=cfg.rounds, initial=state.round, disable=not interactive,
               desc=f"{cfg.method} on {cfg.problem}", unit="round", dynamic_ncols=True)
    metrics_file = open(out / "metrics.jsonl", "a") if out else None  # noqa: SIM115
    saved = state.round
    try:
        while state.round < cfg.rounds:
            metrics = _clean(simulate_round(exp, state, flops))
            state.history.append(metrics)
            if metrics_file:
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
            if out and (state.round % cfg.checkpoint_every == 0 or state.round == cfg.rounds):
                checkpoint.save(out, state.x, state.y, state.round, cfg.to_dict())
                saved = state.round
            shown.update({k: f"{metrics[k]:.4g}" for k in
                          ("inner_loss", "outer_loss", "accuracy", "hypergrad_norm")
                          if metrics.get(k) is not None})
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
            if progress and not interactive and (state.round % cfg.eval_every == 0
                                                 or state.round == cfg.rounds):
                print(f"{cfg.method} on {cfg.problem}: round {state.round}/{cfg.rounds} "
                      + " ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
    except KeyboardInterrupt:
        if out and saved < state.round:
            checkpoint.save(out, state.x, state.y, state.round, cfg.to_dict())
        raise
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    if out is not None:
        save_file({f"x.{n}": p.contiguous() for n, p in state.x.items()}
                  | {f"y.{n}": p.contiguous() for n, p in state.y.items()},
                  str(out / "final.safetensors"))
    return state
