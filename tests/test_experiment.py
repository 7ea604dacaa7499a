"""Building an experiment: the problem's contract checked before any round runs, each broken
part a one-line error naming the class and saying what is expected; the config left as given."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytest
import torch

import rabo
from rabo.cli import main
from rabo.config import RunConfig, apply
from rabo.errors import ConfigError
from rabo.submodel import ChannelPlan, vector_plan

DEFAULTS = {"rounds": 2, "inner_steps": 1, "inner_lr": 0.1, "outer_steps": 1, "outer_lr": 0.1,
            "terms": 1, "step": 0.1, "mu": 0.001, "eval_every": 1}


class Pair(rabo.BilevelProblem):
    """x and y of 3 coordinates; ``init`` replaces what init_params returns."""

    defaults: ClassVar[dict[str, Any]] = DEFAULTS

    def __init__(self, clients: int, init: Any = None) -> None:
        self.num_clients, self.init = clients, init
        self.plan = vector_plan({"x": torch.zeros(3), "y": torch.zeros(3)})

    def init_params(self, seed: int) -> Any:
        return self.init if self.init is not None else ({"x": torch.zeros(3)},
                                                        {"y": torch.zeros(3)})


def build(problem: rabo.BilevelProblem) -> rabo.Experiment:
    return rabo.build(RunConfig(clients=2, capacities=[1.0, 0.5]), problem)


EXPECTED = ("problem class 'Pair': init_params(seed) must return (x, y), two dicts of name -> "
            "torch.Tensor (x the outer variables, y the inner ones)")


@pytest.mark.parametrize(("init", "wrong"), [
    ({"x": torch.zeros(3)}, ", not a dict"),
    (({}, {}, {}), ", not a tuple of 3"),
    (({"x": torch.zeros(3)}, [torch.zeros(3)]), "; its y is a list"),
    (({"x": 0.0}, {"y": torch.zeros(3)}), "; its x['x'] is a float"),
])
def test_init_params_of_the_wrong_shape_says_what_is_expected_and_what_differs(init, wrong):
    with pytest.raises(ConfigError) as err:
        build(Pair(2, init))
    assert str(err.value) == EXPECTED + wrong


def test_missing_num_clients_or_plan_names_the_class():
    problem = Pair(2)
    del problem.num_clients
    with pytest.raises(ConfigError, match="^problem class 'Pair' sets no num_clients; its "
                                          r"constructor must set num_clients to the clients it "
                                          r"is given \(2\)$"):
        build(problem)
    problem = Pair(2)
    del problem.plan
    with pytest.raises(ConfigError, match="^problem class 'Pair' sets no plan: a "
                                          "rabo.ChannelPlan over the tensors"):
        build(problem)
    problem.plan = {"x": 3}
    with pytest.raises(ConfigError, match="^problem class 'Pair' sets no plan"):
        build(problem)


def test_an_object_that_is_no_problem_says_what_build_takes():
    with pytest.raises(ConfigError) as err:
        rabo.build(RunConfig(clients=2), object())
    assert str(err.value) == ("build(config, problem): problem is a object, not a "
                              "rabo.BilevelProblem; pass an instance of a subclass of "
                              "rabo.BilevelProblem, or None to build config.problem")


NOT_PROBLEMS = '''
class Plain:
    pass

def make(clients, seed=0, data_dir=None):
    return None
'''


@pytest.mark.parametrize(("attr", "what"), [
    ("Plain", "Plain is not a subclass of rabo.BilevelProblem"),
    ("make", "make is a function, not a class"),
])
def test_a_reference_to_no_problem_class_says_what_is_expected(attr, what, tmp_path, capsys):
    (tmp_path / "mine.py").write_text(NOT_PROBLEMS)
    ref = f"{tmp_path / 'mine.py'}:{attr}"
    assert main(["run", ref, "--no-progress", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        f"rabo: error: problem {ref!r}: {what}; expected a class declared as "
        f"`class {attr}(rabo.BilevelProblem)` and built as {attr}(clients, seed, data_dir, "
        f"**options)\n")


def test_build_and_apply_leave_the_config_they_are_given_unchanged(tmp_path):
    """Regression: build filled the resolved config in place (problem options, capacities of a
    trace), and apply set fields of the config it was given."""
    trace = tmp_path / "trace.csv"
    trace.write_text("round,client,capacity\n" + "".join(
        f"{t},{k},{0.5 if k else 1.0}\n" for t in (1, 2) for k in (0, 1)))
    config = RunConfig(problem="quadratic", rounds=2, clients=2, capacity_trace=trace,
                       problem_options={"dim": 3}, policy_options={})
    before = copy.deepcopy(config)
    exp = rabo.build(config)
    assert config == before
    assert exp.config.capacity_mode == "trace" and exp.config.capacities == [1.0, 0.5]
    assert exp.config.capacity_trace == str(trace)
    assert exp.config.problem_options["dim"] == 3 and exp.config.problem_options["lam"] == 0.1
    changed = apply(config, {"rounds": "5", "problem.dim": "4", "policy.rotate": "false"},
                    {"dim": int})
    assert config == before
    assert (changed.rounds, changed.problem_options, changed.policy_options) == \
        (5, {"dim": 4}, {"rotate": False})


def test_plan_of_a_problem_is_checked_against_init_params():
    problem = Pair(2)
    problem.plan = ChannelPlan({"g": 3}, {"z": (rabo.Axis("g"),)})
    with pytest.raises(ConfigError, match="^problem class 'Pair': its plan prunes 'z', which "
                                          "init_params does not return$"):
        build(problem)


def test_a_constructor_that_cannot_take_the_contract_is_one_line_but_its_own_errors_pass():
    """Arguments the constructor cannot bind are the contract's one-line error naming the class;
    a TypeError raised inside the user's constructor is theirs, and reaches them unchanged."""
    from rabo.experiment import construct

    class NoOptions(rabo.BilevelProblem):
        def __init__(self, clients, seed, data_dir):
            raise AssertionError("never entered")

    class Broken(rabo.BilevelProblem):
        def __init__(self, clients, seed, data_dir, **options):
            raise TypeError("inside the constructor")

    cfg = RunConfig(problem="user", problem_options={"width": 3})
    with pytest.raises(ConfigError, match=r"'NoOptions' cannot be built as NoOptions\(clients, "
                                          r"seed, data_dir, \*\*options\).*'width'"):
        construct(NoOptions, cfg)
    with pytest.raises(TypeError, match="inside the constructor"):
        construct(Broken, cfg)
