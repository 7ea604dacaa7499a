"""Partial participation, client failures and rejected updates (docs/algorithm.md §2 with
faults)."""

import math

import pytest
import torch

from rabo import client as client_module
from rabo.accounting import FlopCache
from rabo.config import RunConfig
from rabo.errors import ConfigError
from rabo.experiment import build
from rabo.rounds import RunState
from rabo.runtime.loop import run
from rabo.runtime.simulate import simulate_round
from rabo.server import participants


def test_participation_samples_ceil_p_m_clients_reproducibly():
    chosen, failed = participants(10, 0.35, 0.0, seed=1, round=4)
    assert len(chosen) == math.ceil(0.35 * 10) and failed == []
    assert chosen == sorted(set(chosen)) and participants(10, 0.35, 0.0, 1, 4)[0] == chosen
    assert participants(10, 0.35, 0.0, 1, 5)[0] != chosen or \
        participants(10, 0.35, 0.0, 1, 6)[0] != chosen


def test_thirty_percent_failures_equal_a_run_without_those_clients():
    config = RunConfig(problem="losstuning", method="rabo", rounds=6, fail_prob=0.3,
                       eval_every=3)
    exp = build(config)
    state = run(exp, None, progress=False)
    assert any(m["failed"] for m in state.history)
    for m in state.history:
        assert set(m["failed"]).isdisjoint(m["clients"])
        assert sorted(m["clients"] + m["failed"]) == list(range(10))
    absent = RunState(*exp.problem.init_params(0))
    flops = FlopCache()
    for m in state.history:
        alive = [i for i in range(10) if i not in m["failed"]]
        replay = simulate_round(exp, absent, flops, clients=(alive, []))
        assert replay["inner_loss"] == m["inner_loss"]
        assert replay["outer_loss"] == m["outer_loss"]
    for n in state.y:
        assert torch.equal(state.y[n], absent.y[n])
    for n in state.x:
        assert torch.equal(state.x[n], absent.x[n])


def test_a_client_update_with_nan_is_rejected_and_logged(monkeypatch):
    real = client_module.client_phase

    def poisoned(problem, phase, x, y, index, client, *rest):
        delta, loss = real(problem, phase, x, y, index, client, *rest)
        if client == 3 and phase == "inner":
            delta = {n: torch.full_like(d, float("nan")) for n, d in delta.items()}
        return delta, loss

    monkeypatch.setattr(client_module, "client_phase", poisoned)
    exp = build(RunConfig(problem="quadratic", method="rabo", rounds=2, capacities=[1.0],
                          batch_clients=False))
    state = run(exp, None, progress=False)
    assert [m["rejected"] for m in state.history] == [[3], [3]]
    assert all(torch.isfinite(p).all() for p in state.y.values())
    assert [m["cover_y"] for m in state.history] == [9, 9]   # nine clients' updates counted


def test_uncovered_coordinates_stay_when_every_client_fails():
    exp = build(RunConfig(problem="quadratic", method="rabo", rounds=1))
    state = RunState(*exp.problem.init_params(0))
    before = {n: p.clone() for n, p in state.y.items()}
    metrics = simulate_round(exp, state, FlopCache(), clients=(list(range(10)),
                                                               list(range(10))))
    assert metrics["cover_y"] == 0 and metrics["uncovered_y"] == 1.0
    assert all(torch.equal(state.y[n], before[n]) for n in before)


@pytest.mark.parametrize("key,value", [("participation", 0.0), ("participation", 1.5),
                                       ("fail_prob", 1.0), ("fail_prob", -0.1)])
def test_bad_fault_settings(key, value):
    with pytest.raises(ConfigError, match=key):
        build(RunConfig(problem="quadratic", **{key: value}))


def test_a_diverged_run_stops_with_a_clear_error_and_keeps_its_checkpoint(tmp_path):
    from rabo import checkpoint
    from rabo.errors import DivergedError

    exp = build(RunConfig(problem="losstuning", method="rabo", rounds=30, outer_lr=1000.0,
                          eval_every=10))
    with pytest.raises(DivergedError, match=r"round 2: every client's update was NaN or Inf.*"
                                            r"lower inner_lr and outer_lr"):
        run(exp, tmp_path, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    x, y, done, _ = checkpoint.load(tmp_path, exp.problem.init_params(0))
    assert done == 2 and all(torch.isfinite(p).all() for p in [*x.values(), *y.values()])
