"""Measured cost savings of dual pruning (docs/algorithm.md §6) and the cover numbers each
policy gives."""

import pytest

from rabo.config import RunConfig
from rabo.cost import measure

PAPER_MIX = [1.0, 0.5, 0.25, 0.125, 0.0625]


@pytest.fixture(scope="module", params=[1, 5], ids=["5w1s", "5w5s"])
def fewshot_costs(request):
    config = RunConfig(problem="fewshot", capacities=PAPER_MIX,
                       problem_options={"shots": request.param, "tasks": 1,
                                        "source": "synthetic"})
    return {r["method"]: r for r in measure(config, ["fedmbo", "rabo", "rafbo", "static", "oap"])}


def test_rabo_costs_at_most_thirty_percent_of_fedmbo(fewshot_costs):
    rabo = fewshot_costs["rabo"]
    assert rabo["flops_ratio"] <= 0.30 and rabo["bytes_ratio"] <= 0.30
    assert fewshot_costs["rafbo"]["bytes_ratio"] <= 0.30


def test_rafbo_costs_no_more_than_rabo(fewshot_costs):
    # Both estimators run the backbone once forward and once backward (features are computed
    # once, docs/algorithm.md §3); they differ only on the 5-way head, where RAFBO's forward
    # differences (one head gradient per HVP, g(x, y) evaluated once for both bases) match the
    # exact HVPs.
    rabo, rafbo = fewshot_costs["rabo"], fewshot_costs["rafbo"]
    assert rafbo["flops"] <= rabo["flops"]
    assert rafbo["flops_inner"] == rabo["flops_inner"]
    assert rafbo["flops"] >= 0.999 * rabo["flops"]


def test_cover_numbers_of_the_policies(fewshot_costs):
    assert fewshot_costs["fedmbo"]["cover_x"] == 10
    assert fewshot_costs["static"]["cover_x"] == 2     # the two full-capacity clients
    assert fewshot_costs["rabo"]["cover_x"] == 2       # importance masks are nested too
    assert fewshot_costs["oap"]["cover_x"] >= 1
    assert fewshot_costs["oap"]["cover_y"] >= 1


def test_segments_set_the_cover_number_exactly():
    config = RunConfig(problem="quadratic", clients=3, capacities=[1.0], method="rabo",
                       policy="segments",
                       policy_options={"segments": [[[0.0, 0.5]], [[0.5, 1.0]], [[0.0, 1.0]]]})
    (row,) = measure(config, ["rabo"], rounds=2)
    assert row["cover_x"] == 2 and row["cover_y"] == 2


def test_the_cost_report_counts_rounds_without_evaluating(monkeypatch):
    """Its rounds are the run's last (``rounds`` = 2 here), which evaluate in a run: a ResNet-12
    cost report spent half an hour on 600 final test episodes before this."""
    from rabo.problems import get_problem

    def evaluate(*args, **kwargs):
        raise AssertionError("the cost report evaluated")
    monkeypatch.setattr(get_problem("quadratic"), "evaluate", evaluate)
    (row,) = measure(RunConfig(problem="quadratic", eval_every=1), ["rabo"], rounds=2)
    assert row["flops"] > 0 and row["bytes_down"] > 0
