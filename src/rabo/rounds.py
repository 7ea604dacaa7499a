"""One round of Algorithm 1, written once for every runtime (docs/algorithm.md §2).

The driver decides who takes part, computes the masks, extracts each client's submodel, hands
the jobs of a phase to a :class:`Transport` (in-process calls in the simulator, messages on
Flower), aggregates what comes back with the server step and logs the round. A client that
does not answer (None) counts as failed; an update with NaN or Inf is rejected.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import server
from .accounting import message_bytes, nbytes
from .experiment import Experiment
from .metrics import mean
from .submodel import ChannelPlan, Params, SubmodelIndex


@dataclass
class RunState:
    """Server state between rounds: full-size x^t, y^t and the next round t."""

    x: Params
    y: Params
    round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    """What the server sends a client for one phase: its id, index sets and submodel."""

    client: int
    index: SubmodelIndex
    x: Params
    y: Params


@dataclass(frozen=True)
class Reply:
    """What a client sends back: Δ (of y in the inner phase, of x in the outer), its loss and
    the FLOPs it counted."""

    delta: Params
    loss: float
    flops: int


class Transport(Protocol):
    """Runs a phase's jobs on the clients; a reply is None where the client failed."""

    def __call__(self, phase: str, round: int, jobs: Sequence[Job]) -> list[Reply | None]: ...


@dataclass
class Phase:
    """The server's view of one phase: accepted (index, Δ) pairs, losses and costs."""

    indices: list[SubmodelIndex] = field(default_factory=list)
    deltas: list[Params] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    flops: int = 0
    bytes_down: int = 0
    bytes_up: int = 0


def run_phase(exp: Experiment, transport: Transport, phase: str, x: Params, y: Params,
              clients: list[int], indices: list[SubmodelIndex], round: int,
              failed: list[int], rejected: list[int]) -> Phase:
    """Send each client its submodel, collect the replies, drop the failed and the
    non-finite ones (recording who), and count bytes both ways."""
    plan = exp.problem.plan
    jobs = [Job(i, index, plan.extract(x, index), plan.extract(y, index))
            for i, index in zip(clients, indices, strict=True)]
    result = Phase()
    for job, reply in zip(jobs, transport(phase, round, jobs), strict=True):
        result.bytes_down += message_bytes(plan, phase, job.x, job.y, job.index)
        if reply is None:
            failed.append(job.client)
            continue
        result.bytes_up += nbytes(reply.delta)
        result.flops += reply.flops
        if not server.is_finite(reply.delta):
            rejected.append(job.client)
            continue
        result.indices.append(job.index)
        result.deltas.append(reply.delta)
        result.losses.append(reply.loss)
    return result


def divergence(metrics: dict[str, Any]) -> str | None:
    """Why a logged round shows the run diverged (every answering client's update was NaN or
    Inf, so nothing can be aggregated now or later), or None."""
    answered = set(metrics["clients"])
    if not answered or not answered <= set(metrics["rejected"]):
        return None
    return (f"round {metrics['round']}: every client's update was NaN or Inf, so the run "
            f"diverged; lower inner_lr and outer_lr (the loss values in metrics.jsonl show "
            f"where it grew)")


def pause_for_tests(point: str, round: int) -> None:
    """Test hook, off unless the environment sets ``RABO_TEST_PAUSE=POINT:ROUND``: at that
    point of that round ("evaluate": before a round's evaluation, "checkpoint": inside the
    deferred write of a checkpoint, "final": inside the final save) say so on stderr and sleep
    2 s, so a test can send a signal into exactly that window."""
    if os.environ.get("RABO_TEST_PAUSE") == f"{point}:{round}":
        print(f"rabo-test-pause {point} {round}", file=sys.stderr, flush=True)
        time.sleep(2.0)


def run_round(exp: Experiment, state: RunState, transport: Transport,
              clients: tuple[list[int], list[int]] | None = None,
              evaluate: bool = True) -> dict[str, Any]:
    """One round; updates ``state`` and returns its metrics. ``clients`` = (participants,
    failed) overrides the seeded draw of :func:`server.participants`. With ``evaluate`` False
    the round skips the evaluation its number would call for (every ``eval_every`` rounds and
    the last), as the cost report and the benchmarks, which time and count rounds, want."""
    start = time.perf_counter()
    cfg, problem, plan = exp.config, exp.problem, exp.problem.plan
    t, x, y = state.round, state.x, state.y
    capacities = exp.schedule.at(t)
    chosen, simulated = clients or server.participants(cfg.clients, cfg.participation,
                                                        cfg.fail_prob, cfg.seed, t)
    failed = list(simulated)
    alive = [i for i in chosen if i not in failed]
    indices = server.round_masks(exp.policy, plan, x, y, [capacities[i] for i in alive], t,
                                 cfg.seed)
    rejected: list[int] = []
    inner = run_phase(exp, transport, "inner", x, y, alive, indices, t, failed, rejected)
    y, cover_y = server.server_update(plan, y, inner.indices, inner.deltas)
    outer = Phase()
    if exp.tunes_x:
        answered = [(i, index) for i, index in zip(alive, indices) if i not in failed]
        outer = run_phase(exp, transport, "outer", x, y, [i for i, _ in answered],
                          [index for _, index in answered], t, failed, rejected)
        x, cover_x = server.server_update(plan, x, outer.indices, outer.deltas)
    else:
        cover_x = server.cover_stats(server.cover_counts(plan, x, []))

    state.x, state.y, state.round = x, y, t + 1
    metrics: dict[str, Any] = {
        "round": t + 1, "method": cfg.method,
        "inner_loss": mean(inner.losses), "outer_loss": mean(outer.losses),
        "cover_x": cover_x.minimum, "cover_y": cover_y.minimum,
        "uncovered_x": cover_x.uncovered, "uncovered_y": cover_y.uncovered,
        **channel_metrics(plan, x, outer.indices, "x"),
        **channel_metrics(plan, y, inner.indices, "y"),
        "flops": inner.flops + outer.flops, "flops_inner": inner.flops,
        "flops_outer": outer.flops, "bytes_down": inner.bytes_down + outer.bytes_down,
        "bytes_up": inner.bytes_up + outer.bytes_up,
        "capacities": [capacities[i] for i in alive if i not in failed],
        "clients": [i for i in alive if i not in failed], "failed": sorted(set(failed)),
        "rejected": sorted(set(rejected)),
    }
    metrics.update(problem.round_metrics(x, y))
    if evaluate and ((t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds):
        pause_for_tests("evaluate", t + 1)
        metrics.update(problem.evaluate(x, y, final=t + 1 == cfg.rounds))
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def channel_metrics(plan: ChannelPlan, params: Params, indices: list[SubmodelIndex],
                    name: str) -> dict[str, Any]:
    """``channel_cover_{name}_min`` / ``_mean``: the fewest / mean number of the round's accepted
    clients that keep a channel of ``params``' groups (:func:`~rabo.server.channel_cover`)."""
    fewest, mean = server.channel_cover(plan, list(params), indices)
    return {f"channel_cover_{name}_min": fewest, f"channel_cover_{name}_mean": mean}


