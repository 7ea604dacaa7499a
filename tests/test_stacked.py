"""The batched client path (same-shape clients stacked under vmap) gives the sequential path's
results: parameters, per-client losses and FLOP counts, so the fast path stays correct."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rabo import server, stacked
from rabo.accounting import FlopCache
from rabo.client import client_phase
from rabo.config import RunConfig
from rabo.experiment import build
from rabo.rounds import Job, RunState, run_round
from rabo.runtime.simulate import LocalTransport


def rounds(config: RunConfig, batched: bool, count: int) -> tuple[RunState, list[dict]]:
    exp = build(dataclasses.replace(config, batch_clients=batched))
    state = RunState(*exp.problem.init_params(exp.config.seed))
    transport = LocalTransport(exp, FlopCache())
    assert transport.batched == batched          # the path under test is the one taken
    return state, [run_round(exp, state, transport) for _ in range(count)]


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.allclose(value, b[name], rtol=0, atol=atol), \
            (name, float((value - b[name]).abs().max()))


CASES = {
    "quadratic": (RunConfig(problem="quadratic", clients=12, capacities=[1.0, 0.5, 0.25]), 1e-12),
    "fewshot": (RunConfig(problem="fewshot", clients=6, capacities=[1.0, 0.25, 0.0625],
                          batch_clients=True,
                          eval_every=100, inner_steps=2, adapt_steps=2, terms=3,
                          problem_options={"source": "synthetic", "tasks": 2}), 2e-6),
}


@pytest.mark.parametrize("name", list(CASES))
def test_batched_clients_equal_sequential(name):
    config, atol = CASES[name]
    (seq, seq_metrics), (bat, bat_metrics) = (rounds(config, b, 2) for b in (False, True))
    assert_close(seq.x, bat.x, atol)
    assert_close(seq.y, bat.y, atol)
    for a, b in zip(seq_metrics, bat_metrics, strict=True):
        for key in ("inner_loss", "outer_loss"):
            assert a[key] == pytest.approx(b[key], abs=atol * 10)
        for key in ("flops", "flops_inner", "flops_outer", "bytes_down", "bytes_up", "clients"):
            assert a[key] == b[key], key
    assert seq_metrics[0]["flops"] > 0


def test_stacked_step_returns_each_clients_own_update():
    """Stacking three clients of one shape gives each exactly its sequential Δ and loss."""
    exp = build(CASES["fewshot"][0])
    x, y = exp.problem.init_params(0)
    plan, settings = exp.problem.plan, exp.settings
    index = server.round_masks(exp.policy, plan, x, y, [0.25] * 3, 0, 0)
    jobs = [Job(c, index[k], plan.extract(x, index[k]), plan.extract(y, index[k]))
            for k, c in enumerate((0, 2, 5))]
    for phase in ("inner", "outer"):
        together = stacked.stacked_step(exp.problem, phase, jobs, 0, settings, 0)
        for job, (delta, loss) in zip(jobs, together, strict=True):
            alone, alone_loss = client_phase(exp.problem, phase, job.x, job.y, job.index,
                                             job.client, 0, settings, 0)
            assert_close(alone, delta, 2e-6)
            assert loss == pytest.approx(alone_loss, abs=1e-5)
        assert len({float(d[next(iter(d))].sum()) for d, _ in together}) == 3  # not one copy


def test_only_blockwise_estimators_and_vmappable_problems_stack():
    quad = build(RunConfig(problem="quadratic"))
    assert stacked.can_stack(quad.problem, quad.settings)
    for estimator in ("cg", "fd", "fd-dir"):
        exp = build(RunConfig(problem="quadratic", estimator=estimator))
        assert not stacked.can_stack(exp.problem, exp.settings)
        assert not LocalTransport(exp, FlopCache()).batched
    proto = build(RunConfig(problem="fewshot", method="protonet",
                            problem_options={"source": "synthetic"}))
    assert not stacked.can_stack(proto.problem, proto.settings)
    off = build(RunConfig(problem="quadratic", batch_clients=False))
    assert not LocalTransport(off, FlopCache()).batched
    fewshot = build(RunConfig(problem="fewshot", problem_options={"source": "synthetic"}))
    assert not LocalTransport(fewshot, FlopCache()).batched   # its default: one by one
    assert LocalTransport(build(CASES["fewshot"][0]), FlopCache()).batched
