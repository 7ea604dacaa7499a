"""The in-process simulator: M clients over T rounds in one process; the round itself is
:func:`rabo.rounds.run_round`, the same driver the Flower app uses."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import checkpoint, client
from ..accounting import FlopCache, shape_key
from ..experiment import Experiment
from ..rounds import Job, Reply, RunState, Transport, run_round


class LocalTransport:
    """The simulator's transport: each job is a direct call of the client step, its FLOPs
    counted once per (phase, cost key, shapes) by the :class:`FlopCache`."""

    def __init__(self, exp: Experiment, flops: FlopCache):
        self.exp, self.flops = exp, flops

    def __call__(self, phase: str, round: int, jobs: Sequence[Job]) -> list[Reply | None]:
        problem, settings, seed = self.exp.problem, self.exp.settings, self.exp.config.seed
        step = client.inner_phase if phase == "inner" else client.outer_phase
        replies: list[Reply | None] = []
        for job in jobs:
            (delta, m), fl = self.flops.run(
                (phase, problem.cost_key(job.client), shape_key(job.x), shape_key(job.y)),
                partial(step, problem, job.x, job.y, job.index, job.client, round, settings,
                        seed))
            replies.append(Reply(delta, m[f"{phase}_loss"], fl))
        return replies


def simulate_round(exp: Experiment, state: RunState, flops: FlopCache,
                   clients: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """One round in this process (see :func:`rabo.rounds.run_round`)."""
    return run_round(exp, state, LocalTransport(exp, flops), clients)


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats are written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def run(exp: Experiment, out: Path | None = None, progress: bool = True,
        resume: bool = False, transport: Transport | None = None) -> RunState:
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round, flushed),
    a checkpoint every ``checkpoint_every`` rounds and at the end, and final.safetensors.
    Progress is a bar on a terminal, a plain line per evaluation round otherwise.
    ``resume`` continues from ``out``'s checkpoint; Ctrl-C checkpoints the last round first.
    ``transport`` carries the client steps (default: in this process; the Flower ServerApp
    passes its own and so shares this loop, its files and its checkpoints)."""
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
    transport = transport or LocalTransport(exp, FlopCache())
    shown: dict[str, str] = {}
    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=cfg.rounds, initial=state.round, disable=not interactive,
               desc=f"{cfg.method} on {cfg.problem}", unit="round", dynamic_ncols=True)
    metrics_file = open(out / "metrics.jsonl", "a") if out else None  # noqa: SIM115
    saved = state.round
    try:
        while state.round < cfg.rounds:
            metrics = _clean(run_round(exp, state, transport))
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
