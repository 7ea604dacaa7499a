"""The problem contract (rabo.BilevelProblem, rabo.Objective, rabo.Task): g reads only a task's
``inner`` data and f only its ``outer`` data, a task's K steps read its K batches or reuse its
one (features once per batch), ``sample`` and the losses are checked with one-line errors naming
the class, and ``evaluate`` always gets ``final``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import rabo
from rabo.client import ClientSettings, client_phase, descend, phase_data
from rabo.errors import ConfigError
from rabo.hypergrad import hypergradient
from rabo.problem import Losses, Objective, Task
from rabo.stacked import vmap_clients
from rabo.submodel import vector_plan

IMPLICIT = ["neumann", "cg", "fd", "fd-dir"]


class ReadsEither(Objective):
    """g = ½ yᵀA y − yᵀB x and f = ½‖y − c‖² where A, B and c come from the data each loss is
    given, so g on f's data is a different (well-posed) g: ĥ = Bᵀ A⁻¹ (y − c) with A, B from
    g's data and c from f's."""

    def inner_loss(self, x, y, data):
        return 0.5 * y["y"] @ data["A"] @ y["y"] - y["y"] @ data["B"] @ x["x"]

    def outer_loss(self, x, y, data):
        r = y["y"] - data["c"]
        return 0.5 * r @ r


class ReadsEitherSplit(ReadsEither):
    """The same losses split at the x-only part B x of each loss's data."""

    def features(self, x, data):
        return data["B"] @ x["x"]

    def inner_loss_from(self, feats, y, data):
        return 0.5 * y["y"] @ data["A"] @ y["y"] - y["y"] @ feats

    def outer_loss_from(self, feats, y, data):
        return self.outer_loss({}, y, data)


def _data(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    return {"A": q @ torch.diag(torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)) @ q.T,
            "B": torch.randn(3, 2, generator=gen, dtype=torch.float64),
            "c": torch.randn(3, generator=gen, dtype=torch.float64)}


@pytest.mark.parametrize("problem", [ReadsEither(), ReadsEitherSplit()], ids=["plain", "split"])
@pytest.mark.parametrize("name", IMPLICIT)
def test_estimators_evaluate_g_on_g_data_only(problem, name):
    g_data, f_data = _data(1), _data(2)
    x = {"x": torch.tensor([0.3, -0.7], dtype=torch.float64)}
    y = {"y": torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64)}
    h = hypergradient(problem, x, y, Task((g_data,), f_data), name, terms=200, step=0.4)
    expected = g_data["B"].T @ torch.linalg.solve(g_data["A"], y["y"] - f_data["c"])
    g_on_f_data = f_data["B"].T @ torch.linalg.solve(f_data["A"], y["y"] - f_data["c"])
    assert float((g_on_f_data - expected).norm()) > 0.1 * float(expected.norm())
    torch.testing.assert_close(h["x"], expected, rtol=1e-6, atol=1e-9)


class Pull(Objective):
    """g = ½‖y − d‖² on a batch d, split at a (trivial) x-only feature that counts its calls."""

    def __init__(self):
        self.feature_calls = 0

    def inner_loss(self, x, y, data):
        return 0.5 * ((y["y"] - data) ** 2).sum()

    def features(self, x, data):
        self.feature_calls += 1
        return data

    def inner_loss_from(self, feats, y, data):
        return 0.5 * ((y["y"] - feats) ** 2).sum()


def test_a_task_steps_through_its_batches_or_reuses_its_one():
    """ỹ^{k+1} = ỹ^k − η(ỹ^k − d_k), η = ½: from 0 over batches 4, 8, 16 → 2, 5, 10.5 (losses
    ½(y − d)² = 8, 18, 60.5); over one batch 4 three times → 2, 3, 3.5. Features: once per batch
    of the task."""
    problem, y0 = Pull(), {"y": torch.zeros(1, dtype=torch.float64)}
    d = [torch.tensor([v], dtype=torch.float64) for v in (4.0, 8.0, 16.0)]
    y, losses = descend(problem, {}, y0, Task(tuple(d)), 3, 0.5)
    assert float(y["y"]) == 10.5 and [float(v) for v in losses] == [8.0, 18.0, 60.5]
    assert problem.feature_calls == 3
    y, _ = descend(problem, {}, y0, Task((d[0],)), 3, 0.5)
    assert float(y["y"]) == 3.5 and problem.feature_calls == 4


class Tiny(rabo.BilevelProblem):
    """g = ½‖y − x‖², f = ½‖y − c‖² with c = client + 1; ``evaluate`` records ``final``
    and ``per_example`` makes the losses return per-coordinate vectors (a broken contract)."""

    name = "tiny"
    defaults: ClassVar[dict[str, Any]] = {
        "rounds": 3, "inner_steps": 2, "inner_lr": 0.5, "outer_steps": 1, "outer_lr": 0.5,
        "terms": 2, "step": 0.5, "mu": 1e-3, "eval_every": 1}

    def __init__(self, clients: int, per_example: bool = False, tasks: Any = None):
        self.num_clients, self.per_example, self.tasks = clients, per_example, tasks
        self.plan = vector_plan({"x": torch.zeros(2), "y": torch.zeros(2)},
                                {"x": "coord", "y": "coord"})
        self.finals: list[bool] = []

    def init_params(self, seed):
        return {"x": torch.zeros(2, dtype=torch.float64)}, {"y": torch.ones(2, dtype=torch.float64)}

    def sample(self, client, phase, rng, steps):
        if self.tasks is not None:
            return self.tasks
        c = torch.full((2,), client + 1.0, dtype=torch.float64)
        return [Task(({"c": c},), {"c": c} if phase == "outer" else None)]

    def _reduce(self, values):
        return values if self.per_example else values.sum()

    def inner_loss(self, x, y, data):
        return self._reduce(0.5 * (y["y"] - x["x"]) ** 2)

    def outer_loss(self, x, y, data):
        return self._reduce(0.5 * (y["y"] - data["c"]) ** 2)

    def evaluate(self, x, y, final):
        self.finals.append(final)
        return {}


SETTINGS = ClientSettings(inner_steps=2, inner_lr=0.5, outer_steps=1, outer_lr=0.5,
                          estimator="neumann", estimator_options={"terms": 2, "step": 0.5})


def _phase(problem: Tiny, phase: str) -> tuple[dict, float]:
    x, y = problem.init_params(0)
    index = {"coord": torch.arange(2)}
    return client_phase(problem, phase, x, y, index, 0, 0, SETTINGS, 0)


@pytest.mark.parametrize("phase,method", [("inner", "inner_loss"), ("outer", "outer_loss")])
def test_a_loss_that_is_not_a_scalar_is_a_one_line_error(phase, method):
    with pytest.raises(ConfigError, match=rf"^problem class 'Tiny': {method} returned shape "
                                          r"\(2,\), not a scalar tensor"):
        _phase(Tiny(1, per_example=True), phase)


def test_a_stacked_loss_that_is_not_a_scalar_per_client_is_the_same_error():
    losses = Losses(Tiny(2, per_example=True), vmap_clients)
    x, y = {"x": torch.zeros(2, 2)}, {"y": torch.ones(2, 2)}
    with pytest.raises(ConfigError, match=r"^problem class 'Tiny': inner_loss returned shape "
                                          r"\(2,\)"):
        losses.inner_loss(x, y, {"c": torch.zeros(2, 2)})
    assert Losses(Tiny(2), vmap_clients).inner_loss(x, y, {}).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("tasks,phase,message", [
    ({"c": 1}, "inner", "'inner', rng, 2\\) returned dict, not a non-empty list of rabo.Task"),
    ([], "inner", "'inner', rng, 2\\) returned list, not a non-empty list of rabo.Task"),
    ([Task(({}, {}, {}))], "inner",
     ("'inner', rng, 2\\) returned a task with 3 batches of g; a task holds one per step "
      "\\(2\\) or one that every step reuses")),
    ([Task(({},))], "outer", "'outer', rng, 1\\) returned a task without f's data"),
])
def test_sample_breaking_its_contract_is_a_one_line_error(tasks, phase, message):
    with pytest.raises(ConfigError, match=r"^problem class 'Tiny': sample\(client, " + message):
        phase_data(Tiny(1, tasks=tasks), phase, {"coord": torch.arange(2)}, 0, 0, SETTINGS, 0)



def test_task_inner_must_be_a_tuple_of_batches():
    with pytest.raises(ConfigError, match=r"Task.inner must be a non-empty tuple .* not dict"):
        Task({"images": torch.zeros(1)})


def test_phase_data_draws_k_batches_in_one_task_and_t_draws_of_tasks():
    """The inner phase: one draw of ``sample`` for K steps; the outer phase: T draws of one."""
    calls = []

    class Counting(Tiny):
        def sample(self, client, phase, rng, steps):
            calls.append((phase, steps))
            return super().sample(client, phase, rng, steps)

    settings = ClientSettings(3, 0.5, 2, 0.5, "neumann")
    inner = phase_data(Counting(1), "inner", {"coord": torch.arange(2)}, 0, 0, settings, 0)
    outer = phase_data(Counting(1), "outer", {"coord": torch.arange(2)}, 0, 0, settings, 0)
    assert calls == [("inner", 3), ("outer", 1), ("outer", 1)]
    assert [len(tasks) for tasks in inner] == [1] and [len(tasks) for tasks in outer] == [1, 1]
    assert inner[0][0].outer is None and outer[1][0].outer["c"].tolist() == [1.0, 1.0]


def test_the_driver_passes_final_to_evaluate():
    problem = Tiny(2)
    config = rabo.RunConfig(method="rabo", clients=2, capacities=[1.0, 0.5], seed=0)
    rabo.simulate(rabo.build(config, problem), None, progress=False)
    assert problem.finals == [False, False, True]


def test_rng_draw_order_of_a_non_episodic_problem_is_k_minibatches_one_after_another():
    """losstuning's inner task holds the K minibatches that K single draws would give, in
    order; the outer task, the train then the validation minibatch."""
    from rabo.data import sample_batch
    from rabo.problems.losstuning import LossTuning
    problem = LossTuning(clients=2, seed=0)
    train, val = problem.data.clients[1]
    (task,) = problem.sample(1, "inner", np.random.default_rng(7), 3)
    rng = np.random.default_rng(7)
    for batch in task.inner:
        assert torch.equal(batch[0], sample_batch(problem.data, train, 32, rng)[0])
    (task,) = problem.sample(1, "outer", np.random.default_rng(7), 1)
    rng = np.random.default_rng(7)
    assert torch.equal(task.inner[0][1], sample_batch(problem.data, train, 32, rng)[1])
    assert torch.equal(task.outer[1], sample_batch(problem.data, val, 32, rng)[1])


def test_the_public_hypergradient_checks_its_problem_batch_and_losses_in_one_line():
    """``rabo.hypergradient`` takes a rabo.Objective and a rabo.Task, and a loss that is not a
    scalar is the same one-line error a run gives (it was summed silently before)."""
    import rabo

    class Duck:                       # the two losses, but not a rabo.Objective
        def inner_loss(self, x, y, batch):
            return ((y["y"] - x["x"]) ** 2).sum()

        def outer_loss(self, x, y, batch):
            return (y["y"] ** 2).sum()

    class Quadratic(Duck, rabo.Objective):
        pass

    class PerExample(Quadratic):
        def inner_loss(self, x, y, batch):
            return (y["y"] - x["x"]) ** 2

    x, y, task = {"x": torch.ones(2)}, {"y": torch.full((2,), 0.5)}, rabo.Task((None,), None)
    with pytest.raises(rabo.ConfigError, match="problem is a Duck, not a rabo.Objective"):
        rabo.hypergradient(Duck(), x, y, task)
    with pytest.raises(rabo.ConfigError, match="batch is a tuple, not a rabo.Task"):
        rabo.hypergradient(Quadratic(), x, y, (None, None))
    with pytest.raises(rabo.ConfigError, match="'PerExample': inner_loss returned shape"):
        rabo.hypergradient(PerExample(), x, y, task)
    # y*(x) = x, F(x) = ‖x‖²: at y = 0.5, ĥ = ∇_x f − J H⁻¹ ∇_y f = 0 − (−2I)(2I)⁻¹(2·0.5) = 1
    h = rabo.hypergradient(Quadratic(), x, y, task, terms=200, step=0.25)
    torch.testing.assert_close(h["x"], torch.ones(2), rtol=1e-4, atol=1e-4)
