"""The run loop both runtimes share: rounds of :func:`rabo.rounds.run_round` until the
last, a run directory opened (new or resumed), each round logged to metrics.jsonl and
checkpointed when due, progress shown, stop signals and divergence handled. The simulator
runs it with its in-process transport, the Flower ServerApp with messages to its nodes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Self

import torch

from .. import checkpoint, rundir
from ..accounting import FlopCache
from ..config import RunConfig
from ..errors import DivergedError, StoppedError
from ..experiment import Experiment
from ..metrics import headline
from ..rounds import RunState, Transport, divergence, pause_for_tests, run_round
from ..submodel import Params
from .simulate import LocalTransport

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, n))


def run(exp: Experiment, out: str | Path | None = None, progress: bool = True,
        resume: bool = False, transport: Transport | None = None) -> RunState:
    """Run all rounds; with ``out``, write config.json, metrics.jsonl (a line a round), a
    checkpoint every ``checkpoint_every`` rounds and at the end, and final.safetensors,
    holding ``out``'s lock (:func:`rabo.rundir.locked`) throughout. Progress is a bar on
    a terminal, a plain line per evaluation round otherwise. ``resume`` continues from
    ``out``'s checkpoint (none: from the start), first repairing what a stopped run may
    have left (:func:`rabo.rundir.logged_rounds`); a finished run without its
    final.safetensors only writes it. SIGINT, SIGTERM and SIGHUP raise
    :class:`Interrupted` after checkpointing the last logged round, and so does a
    diverged round (every update non-finite), which then stops the run with a
    :class:`DivergedError`, and a transport that raises a :class:`StoppedError` (on
    Flower: no client answered a whole phase): metrics.jsonl always holds exactly the
    rounds 1..checkpoint round, once a round is checkpointed. ``transport`` carries the
    client steps (default: in this process; the Flower ServerApp passes its own and so
    shares this loop, its files and its checkpoints)."""
    out = None if out is None else Path(out)
    if exp.config.threads is not None:
        torch.set_num_threads(exp.config.threads)
    if out is None:
        start = RunState(*exp.problem.init_params(exp.config.seed))
        return _loop(exp, start, None, progress, transport)
    with rundir.locked(out):
        return _loop(exp, open_run(exp, out, resume), out, progress, transport)


def open_run(exp: Experiment, out: Path, resume: bool) -> RunState:
    """The state a run in ``out`` starts from: a new run writes its config.json and an
    empty metrics.jsonl and starts from the problem's initial parameters; a resumed one
    starts from the checkpoint (none: from round 0) with metrics.jsonl cut to the rounds
    it vouches for."""
    like = exp.problem.init_params(exp.config.seed)
    if not resume:
        rundir.write_config(out, exp.config.to_dict())
        return RunState(*like)
    if (out / checkpoint.FILE).exists():
        x, y, done, _ = checkpoint.load(out, like)
        return RunState(x, y, done, rundir.logged_rounds(out, done))
    return RunState(*like, 0, rundir.logged_rounds(out, 0))   # no checkpoint yet


def _loop(exp: Experiment, state: RunState, out: Path | None, progress: bool,
          transport: Transport | None) -> RunState:
    """:func:`run`'s rounds from ``state`` on. A round is logged (its metrics line
    written, and its checkpoint when due) with signals deferred; a signal during a round
    puts the state back to the last logged round before the checkpoint is written."""
    cfg = exp.config
    transport = transport or LocalTransport(exp, FlopCache())
    with Progress(exp, state.round, progress) as shown, \
            RunFiles(cfg, out, state.round) as files:
        before = _snapshot(state)
        with _Signals() as signals:
            try:
                while state.round < cfg.rounds:
                    before = _snapshot(state)
                    metrics = json_safe(run_round(exp, state, transport))
                    with signals.deferred():
                        files.log(state, metrics)
                    shown.update(state.round, metrics)
                    signals.check()
                    if reason := divergence(metrics):
                        kept = f"; run so far kept in {out}" if out else ""
                        raise DivergedError(reason + kept)
                with signals.deferred():
                    files.finish(state)
            except (KeyboardInterrupt, StoppedError):
                with signals.deferred():
                    if len(state.history) < state.round:     # stopped inside a round
                        _restore(state, before)
                    files.save(state)
                raise
    return state


Snapshot = tuple[Params, Params, int, tuple[torch.Tensor, dict[str, Any]]]


def _snapshot(state: RunState) -> Snapshot:
    """What :func:`_restore` needs to put ``state`` and the global RNGs back to now."""
    return state.x, state.y, state.round, checkpoint.rng_snapshot()


def _restore(state: RunState, before: Snapshot) -> None:
    state.x, state.y, state.round, rng = before
    checkpoint.restore_rng(rng)


class RunFiles:
    """What a run writes in ``out`` as it goes: a metrics.jsonl line a round, the
    checkpoint when due and final.safetensors at the end; with no ``out``, only the
    history is kept. ``saved`` is the round the checkpoint holds."""

    def __init__(self, config: RunConfig, out: Path | None, saved: int):
        self.config, self.out, self.saved = config, out, saved
        self.metrics: IO[str] | None = None
        if out is not None:
            self.metrics = open(out / rundir.METRICS, "a")  # noqa: SIM115 (see __exit__)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def log(self, state: RunState, metrics: dict[str, Any]) -> None:
        """Record round ``state.round``: in the history, as a line, and checkpointed
        every ``checkpoint_every`` rounds and at the last."""
        state.history.append(metrics)
        if self.metrics is not None:
            self.metrics.write(json.dumps(metrics) + "\n")
            self.metrics.flush()
        cfg = self.config
        if state.round % cfg.checkpoint_every == 0 or state.round == cfg.rounds:
            self.save(state)

    def save(self, state: RunState) -> None:
        """Checkpoint ``state`` unless the checkpoint holds it already, metrics.jsonl
        synced to disk first (so it holds every round the checkpoint vouches for)."""
        if self.out is None or self.metrics is None or self.saved >= state.round:
            return
        self.metrics.flush()
        os.fsync(self.metrics.fileno())
        pause_for_tests("checkpoint", state.round)
        checkpoint.save(self.out, state.x, state.y, state.round, self.config.to_dict())
        self.saved = state.round

    def finish(self, state: RunState) -> None:
        """final.safetensors: the final x (``x.NAME``) and y (``y.NAME``)."""
        if self.out is None:
            return
        pause_for_tests("final", state.round)
        checkpoint.write_tensors(
            self.out / rundir.FINAL, {f"x.{n}": p for n, p in state.x.items()}
            | {f"y.{n}": p for n, p in state.y.items()},
            {"format": "rabo-final-1", "round": str(state.round)})


class Progress:
    """The run's progress on stderr, labelled "METHOD on NAME" (NAME: the problem class's
    short ``name``, not the reference it was given by): a bar on a terminal, else a plain
    line per evaluation round and at the last, with the latest values of the headline metrics
    (:func:`rabo.metrics.headline`); nothing when not ``enabled``."""

    def __init__(self, exp: Experiment, done: int, enabled: bool):
        from tqdm import tqdm

        self.config = exp.config
        self.shown: dict[str, str] = {}
        self.label = f"{exp.config.method} on {exp.problem.name}"
        interactive = enabled and sys.stderr.isatty()
        self.lines = enabled and not interactive
        self.bar = tqdm(total=exp.config.rounds, initial=done, disable=not interactive,
                        desc=self.label, unit="round", dynamic_ncols=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def update(self, round: int, metrics: dict[str, Any]) -> None:
        """Show round ``round``'s metrics (a value a round lacks stays as last shown)."""
        cfg = self.config
        self.shown.update({k: f"{v:.4g}" for k, v in headline(metrics).items()})
        self.bar.set_postfix(self.shown, refresh=False)
        self.bar.update(1)
        if self.lines and (round % cfg.eval_every == 0 or round == cfg.rounds):
            print(f"{self.label}: round {round}/{cfg.rounds} "
                  + " ".join(f"{k}={v}" for k, v in self.shown.items()), file=sys.stderr)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM or SIGHUP); ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT, SIGTERM and SIGHUP stop the run. Outside :meth:`deferred` they raise
    :class:`Interrupted` at once; inside it (a round's metrics line and checkpoint being
    written) they are only recorded, and :meth:`check` raises them after, so no signal, a
    second one included, leaves those files half written. Once one has raised, later ones
    are only recorded (the run is already stopping and saving). A signal is recorded also
    when Python swallows the exception (raised inside a destructor, it only prints
    "Exception ignored"). Handlers are installed in the main thread only; elsewhere
    nothing is recorded."""

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
