"""The in-process simulator: M clients over T rounds in one process; the round itself is
:func:`rabo.rounds.run_round`, the same driver the Flower app uses."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import checkpoint, client, stacked
from ..accounting import FlopCache, shape_key
from ..errors import DivergedError, StoppedError
from ..experiment import Experiment
from ..rounds import Job, Reply, RunState, Transport, divergence, run_round


class LocalTransport:
    """The simulator's transport: the client steps called in this process, their FLOPs counted
    once per (phase, cost key, shapes) by the :class:`FlopCache`. Clients of one such key run
    together as a stack (:mod:`rabo.stacked`) where the config's ``batch_clients`` (default:
    the problem's ``batch_by_default``), the problem and the estimator allow; the stack is the
    same for a round whatever ran before (a resumed run is exact), and each client is counted
    at one sequential step's FLOPs, measured once per key."""

    def __init__(self, exp: Experiment, flops: FlopCache):
        self.exp, self.flops = exp, flops
        wanted = exp.config.batch_clients
        if wanted is None:                       # the problem's choice: where it measured faster
            wanted = bool(getattr(exp.problem, "batch_by_default", True))
        self.batched = wanted and stacked.can_stack(exp.problem, exp.settings)

    def __call__(self, phase: str, round: int, jobs: Sequence[Job]) -> list[Reply | None]:
        problem, settings, seed = self.exp.problem, self.exp.settings, self.exp.config.seed
        groups: dict[Hashable, list[int]] = {}
        for k, job in enumerate(jobs):
            key = (phase, problem.cost_key(job.client), shape_key(job.x), shape_key(job.y))
            groups.setdefault(key, []).append(k)
        replies: list[Reply | None] = [None] * len(jobs)
        for key, members in groups.items():
            if not (self.batched and len(members) > 1):
                for k in members:
                    replies[k] = self._alone(phase, key, jobs[k], round)
                continue
            if key not in self.flops.counts:     # count one client's step as the others are
                self._alone(phase, key, jobs[members[0]], round)
            results = stacked.stacked_step(problem, phase, [jobs[k] for k in members], round,
                                           settings, seed)
            for k, (delta, loss) in zip(members, results, strict=True):
                replies[k] = Reply(delta, loss, self.flops.counts[key])
        return replies

    def _alone(self, phase: str, key: Hashable, job: Job, round: int) -> Reply:
        exp = self.exp
        (delta, loss), fl = self.flops.run(key, partial(
            client.client_phase, exp.problem, phase, job.x, job.y, job.index, job.client,
            round, exp.settings, exp.config.seed))
        return Reply(delta, loss, fl)


def simulate_round(exp: Experiment, state: RunState, flops: FlopCache,
                   clients: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """One round in this process (see :func:`rabo.rounds.run_round`)."""
    return run_round(exp, state, LocalTransport(exp, flops), clients)


@contextmanager
def _interrupts() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also recorded, so the loop re-raises it
    after the round if Python swallowed it (raised inside a destructor, it only prints
    "Exception ignored"). Main thread only; elsewhere the record stays empty."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def json_safe(value: Any) -> Any:
    """JSON has no NaN: non-finite floats, also inside dicts and lists, become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def run(exp: Experiment, out: str | Path | None = None, progress: bool = True,
        resume: bool = False, transport: Transport | None = None) -> RunState:
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round, flushed),
    a checkpoint every ``checkpoint_every`` rounds and at the end, and final.safetensors.
    Progress is a bar on a terminal, a plain line per evaluation round otherwise.
    ``resume`` continues from ``out``'s checkpoint; Ctrl-C checkpoints the last round first,
    and so does a diverged round (every update non-finite), which then stops the run with a
    :class:`DivergedError`, and a transport that raises a :class:`StoppedError` (on Flower: no
    client answered a whole phase).
    ``transport`` carries the client steps (default: in this process; the Flower ServerApp
    passes its own and so shares this loop, its files and its checkpoints)."""
    from tqdm import tqdm

    out = None if out is None else Path(out)
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
        with _interrupts() as interrupted:
            while state.round < cfg.rounds:
                metrics = json_safe(run_round(exp, state, transport))
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
                if interrupted:            # a Ctrl-C that a destructor swallowed
                    raise KeyboardInterrupt
                if reason := divergence(metrics):
                    raise DivergedError(reason + (f"; run so far kept in {out}" if out else ""))
    except (KeyboardInterrupt, StoppedError):
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
