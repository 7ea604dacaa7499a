"""The in-process simulator: the client steps of a round called in this process (the
transport :func:`rabo.runtime.loop.run` uses by default); the round itself is
:func:`rabo.rounds.run_round`, the same driver the Flower app uses."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from typing import Any

from .. import client, stacked
from ..accounting import FlopCache, shape_key
from ..experiment import Experiment
from ..rounds import Job, Reply, RunState, run_round


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
                   clients: tuple[list[int], list[int]] | None = None,
                   evaluate: bool = True) -> dict[str, Any]:
    """One round in this process (see :func:`rabo.rounds.run_round`)."""
    return run_round(exp, state, LocalTransport(exp, flops), clients, evaluate)
