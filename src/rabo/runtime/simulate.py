"""The in-process simulator: M clients over T rounds in one process; the round itself is
:func:`rabo.rounds.run_round`, the same driver the Flower app uses."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Self

import torch

from .. import checkpoint, client, rundir, stacked
from ..accounting import FlopCache, shape_key
from ..errors import DivergedError, StoppedError
from ..experiment import Experiment
from ..metrics import headline
from ..rounds import Job, Reply, RunState, Transport, divergence, pause_for_tests, run_round


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
            wanted = exp.problem.batch_by_default
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


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM or SIGHUP); ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT, SIGTERM and SIGHUP stop the run. Outside :meth:`deferred` they raise
    :class:`Interrupted` at once; inside it (a round's metrics line and checkpoint being written)
    they are only recorded, and :meth:`check` raises them after, so no signal, a second one
    included, leaves those files half written. Once one has raised, later ones are only
    recorded (the run is already stopping and saving). A signal is recorded also when Python
    swallows the exception (raised inside a destructor, it only prints "Exception ignored").
    Handlers are installed in the main thread only; elsewhere nothing is recorded."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.deferring = self.stopping = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)
        if not (self.deferring or self.stopping):
            self.stopping = True
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def check(self) -> None:
        if self.pending:
            self.stopping = True
            raise Interrupted(self.pending[0])


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
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round), a
    checkpoint every ``checkpoint_every`` rounds and at the end, and final.safetensors, holding
    ``out``'s lock (:func:`rabo.rundir.locked`) throughout.
    Progress is a bar on a terminal, a plain line per evaluation round otherwise.
    ``resume`` continues from ``out``'s checkpoint (none: from the start), first repairing what
    a stopped run may have left (:func:`rabo.rundir.logged_rounds`); a finished run without
    its final.safetensors only writes it. SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`
    after checkpointing the last logged round, and so does a diverged round (every update
    non-finite), which then stops the run with a :class:`DivergedError`, and a transport that
    raises a :class:`StoppedError` (on Flower: no client answered a whole phase):
    metrics.jsonl always holds exactly the rounds 1..checkpoint round, once a round is
    checkpointed.
    ``transport`` carries the client steps (default: in this process; the Flower ServerApp
    passes its own and so shares this loop, its files and its checkpoints)."""
    out = None if out is None else Path(out)
    cfg = exp.config
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if out is None:
        return _loop(exp, RunState(*exp.problem.init_params(cfg.seed)), None, progress,
                     transport)
    with rundir.locked(out):
        like = exp.problem.init_params(cfg.seed)
        if not resume:
            rundir.write_config(out, cfg.to_dict())
            state = RunState(*like)
        elif (out / checkpoint.FILE).exists():
            x, y, done, _ = checkpoint.load(out, like)
            state = RunState(x, y, done, rundir.logged_rounds(out, done))
        else:                                  # stopped before its first checkpoint
            state = RunState(*like, 0, rundir.logged_rounds(out, 0))
        return _loop(exp, state, out, progress, transport)


def _loop(exp: Experiment, state: RunState, out: Path | None, progress: bool,
          transport: Transport | None) -> RunState:
    """:func:`run`'s rounds from ``state`` on. A round is logged (its metrics line written,
    and its checkpoint when due) with signals deferred; a signal during a round puts the
    state back to the last logged round before the checkpoint is written."""
    from tqdm import tqdm

    cfg = exp.config
    transport = transport or LocalTransport(exp, FlopCache())
    shown: dict[str, str] = {}
    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=cfg.rounds, initial=state.round, disable=not interactive,
               desc=f"{cfg.method} on {cfg.problem}", unit="round", dynamic_ncols=True)
    metrics_file = open(out / rundir.METRICS, "a") if out else None  # noqa: SIM115
    saved = state.round
    before = (state.x, state.y, state.round, checkpoint.rng_snapshot())

    def save() -> None:
        nonlocal saved
        if out and metrics_file and saved < state.round:
            metrics_file.flush()
            os.fsync(metrics_file.fileno())
            pause_for_tests("checkpoint", state.round)
            checkpoint.save(out, state.x, state.y, state.round, cfg.to_dict())
            saved = state.round

    try:
        with _Signals() as signals:
            try:
                while state.round < cfg.rounds:
                    before = (state.x, state.y, state.round, checkpoint.rng_snapshot())
                    metrics = json_safe(run_round(exp, state, transport))
                    with signals.deferred():
                        state.history.append(metrics)
                        if metrics_file:
                            metrics_file.write(json.dumps(metrics) + "\n")
                            metrics_file.flush()
                        if state.round % cfg.checkpoint_every == 0 or state.round == cfg.rounds:
                            save()
                    shown.update({k: f"{v:.4g}" for k, v in headline(metrics).items()})
                    bar.set_postfix(shown, refresh=False)
                    bar.update(1)
                    if progress and not interactive and (state.round % cfg.eval_every == 0
                                                         or state.round == cfg.rounds):
                        print(f"{cfg.method} on {cfg.problem}: round {state.round}/{cfg.rounds} "
                              + " ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
                    signals.check()
                    if reason := divergence(metrics):
                        raise DivergedError(reason + (f"; run so far kept in {out}" if out else ""))
                with signals.deferred():
                    if out is not None:
                        pause_for_tests("final", state.round)
                        checkpoint.write_tensors(
                            out / rundir.FINAL, {f"x.{n}": p for n, p in state.x.items()}
                            | {f"y.{n}": p for n, p in state.y.items()},
                            {"format": "rabo-final-1", "round": str(state.round)})
            except (KeyboardInterrupt, StoppedError):
                with signals.deferred():
                    if len(state.history) < state.round:     # stopped inside a round
                        state.x, state.y, state.round, rng = before
                        checkpoint.restore_rng(rng)
                    save()
                raise
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    return state
