"""A user's own rabo.BilevelProblem subclass by reference (`rabo run FILE.py:Class`,
`module:Class`, `problem = "..."` in a config file): run, resume, cost and report through the
CLI; one-line errors for a bad reference or a broken constructor contract."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rabo
from rabo import checkpoint
from rabo.accounting import FlopCache
from rabo.cli import main
from rabo.errors import ConfigError
from rabo.problems import get_problem
from rabo.rounds import RunState
from rabo.runtime.simulate import simulate_round

TINY = '''
"""g_i = ½‖y − x‖², f_i = ½‖y − c_i‖² with c_i = i + 1 on every coordinate: y*(x) = x and
F(x) = 1/M Σ_i ½‖x − c_i‖², minimised at x = c̄."""
from typing import Any, ClassVar

import torch

import rabo
from rabo.submodel import vector_plan


class Tiny(rabo.BilevelProblem):
    name = "tiny"
    defaults: ClassVar[dict[str, Any]] = {
        "rounds": 4, "inner_steps": 1, "inner_lr": 1.0, "outer_steps": 1, "outer_lr": 0.5,
        "terms": 1, "step": 1.0, "mu": 1e-3, "eval_every": 2, "difference": "forward"}
    options: ClassVar[dict[str, Any]] = {"dim": 4}

    def __init__(self, clients, seed=0, data_dir=None, **options):
        self.opts = {**self.options, **options}
        self.num_clients = clients
        d = int(self.opts["dim"])
        self.c = torch.arange(1.0, clients + 1, dtype=torch.float64)[:, None].repeat(1, d)
        self.plan = vector_plan({"x": torch.zeros(d), "y": torch.zeros(d)},
                                {"x": "coord", "y": "coord"})

    def init_params(self, seed):
        d = int(self.opts["dim"])
        return ({"x": torch.zeros(d, dtype=torch.float64)},
                {"y": torch.zeros(d, dtype=torch.float64)})

    def sample(self, client, phase, rng, steps):
        return [rabo.Task(({},), {"c": self.c[client]} if phase == "outer" else None)]

    def restrict(self, batch, index):
        return {n: v[index["coord"]] for n, v in batch.items()}

    def inner_loss(self, x, y, batch):
        return 0.5 * ((y["y"] - x["x"]) ** 2).sum()

    def outer_loss(self, x, y, batch):
        return 0.5 * ((y["y"] - batch["c"]) ** 2).sum()

    def evaluate(self, x, y, final):
        return {"distance": float((x["x"] - self.c.mean(0)).norm())}

    def config(self):
        return dict(self.opts)
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tiny.py in the working directory (a relative reference) and on sys.path (a module)."""
    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


FULL = ["--method", "fedmbo", "--clients", "4", "--capacities", "1", "--no-progress"]


def test_file_reference_runs_the_users_problem_to_its_closed_form(tiny):
    """FedMBO, full model, one exact inner step (η_y = 1: y = x) and an exact Neumann inverse
    (Q = 1, η_N = 1): the hypergradient is x − c_i, so x_T = c̄ (1 − (1 − η_x)^T)."""
    assert main(["run", "tiny.py:Tiny", *FULL, "--out", "run"]) == 0
    config = json.loads((tiny / "run" / "config.json").read_text())
    assert config["problem"] == f"{tiny / 'tiny.py'}:Tiny"      # stored absolute
    assert config["problem_options"] == {"dim": 4} and config["rounds"] == 4
    c_bar = 2.5                                                   # mean of 1, 2, 3, 4
    x = load_file(str(tiny / "run" / "final.safetensors"))["x.x"]
    assert torch.allclose(x, torch.full((4,), c_bar * (1 - 0.5 ** 4), dtype=x.dtype),
                          atol=1e-12)
    rows = _rows(tiny / "run")
    assert [r["round"] for r in rows if "distance" in r] == [2, 4]
    assert rows[-1]["distance"] == pytest.approx(c_bar * 0.5 ** 4 * 2, abs=1e-12)  # √dim = 2


def test_progress_names_a_users_problem_by_its_short_name(tiny, capsys):
    """The progress line (stderr, not a terminal: a line per evaluation round) says "tiny", the
    class's ``name``, not the absolute file reference config.json stores (it did before)."""
    assert main(["run", "tiny.py:Tiny", *FULL[:-1], "--out", "run"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if ": round " in line]
    assert [line.split(" inner_loss")[0] for line in lines] == [
        "fedmbo on tiny: round 2/4", "fedmbo on tiny: round 4/4"]


def test_module_reference_and_config_file_run_the_same_problem(tiny):
    assert main(["run", "tiny.py:Tiny", *FULL, "--out", "file"]) == 0
    assert main(["run", "tiny:Tiny", *FULL, "--out", "module"]) == 0
    (tiny / "c.toml").write_text('problem = "tiny.py:Tiny"\nclients = 4\ncapacities = [1.0]\n')
    assert main(["run", "--config", "c.toml", "--method", "fedmbo", "--no-progress",
                 "--out", "toml"]) == 0
    assert json.loads((tiny / "module" / "config.json").read_text())["problem"] == "tiny:Tiny"
    assert _rows(tiny / "module") == _rows(tiny / "file") == _rows(tiny / "toml")
    # the file is loaded once, however it is written
    assert get_problem("tiny.py:Tiny") is get_problem(str(tiny / "tiny.py") + ":Tiny")


def test_resume_cost_and_report_of_a_users_problem_from_another_directory(tiny, monkeypatch,
                                                                          capsys):
    run = ["run", "tiny.py:Tiny", "--clients", "10", "--checkpoint-every", "2", "--no-progress"]
    assert main([*run, "--out", "whole"]) == 0
    assert main([*run, "--out", "cut"]) == 0
    # pretend the run died after round 2: the checkpoint of round 2, metrics up to round 2
    cut = tiny / "cut"
    config = json.loads((cut / "config.json").read_text())
    exp = rabo.build(rabo.RunConfig(**config))
    state = RunState(*exp.problem.init_params(config["seed"]))
    flops = FlopCache()
    for _ in range(2):
        simulate_round(exp, state, flops)
    checkpoint.save(cut, state.x, state.y, 2, config)
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    elsewhere = tiny / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "--resume", str(cut), "--no-progress"]) == 0
    assert _rows(cut) == _rows(tiny / "whole")
    capsys.readouterr()
    assert main(["cost", str(tiny / "tiny.py") + ":Tiny", "--clients", "10", "--methods",
                 "rabo", "--json", "cost.json"]) == 0
    (row,) = json.loads(Path("cost.json").read_text())
    # capacities 1, ½, ¼, ⅛, 1/16, two clients each, keep w = ⌈4r⌉ = 4, 2, 1, 1, 1 of the 4
    # coordinates: per client 5 float64 vectors of w (x, y, y down; Δy, Δx up) and, if w < 4,
    # w int32 indices: (40 · 18 + 4 · 10) / (40 · 4 · 10) bytes of fedmbo's
    assert row["bytes_ratio"] == pytest.approx(760 / 1600)
    assert main(["report", str(tiny / "whole"), str(tiny / "cut"), "--out", "report"]) == 0
    with open("report/summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["problem"] for r in summary] == [f"{tiny / 'tiny.py'}:Tiny"] * 2
    assert float(summary[0]["rounds"]) == float(summary[1]["rounds"]) == 4


BROKEN = '''
import rabo
from rabo.submodel import ChannelPlan

DEFAULTS = {"rounds": 2, "inner_steps": 1, "inner_lr": 0.1, "outer_steps": 1,
            "outer_lr": 0.1, "terms": 1, "step": 0.1, "mu": 0.001, "eval_every": 1}

class WrongArgs(rabo.BilevelProblem):
    defaults = DEFAULTS

    def __init__(self, n):
        self.num_clients = n

class NoDefaults(rabo.BilevelProblem):
    def __init__(self, clients, seed=0, data_dir=None):
        self.num_clients = clients

class FixedClients(rabo.BilevelProblem):
    defaults = DEFAULTS

    def __init__(self, clients, seed=0, data_dir=None):
        self.num_clients = 5

class NoPlan(rabo.BilevelProblem):
    defaults = DEFAULTS

    def __init__(self, clients, seed=0, data_dir=None):
        self.num_clients = clients

class BadInit(rabo.BilevelProblem):
    defaults = DEFAULTS

    def __init__(self, clients, seed=0, data_dir=None):
        self.num_clients, self.plan = clients, ChannelPlan({})

    def init_params(self, seed):
        return {"x": 0.0}

class NotAProblem:
    pass
'''


@pytest.mark.parametrize(("problem", "message"), [
    ("nosuch.py:Tiny", "file '{tmp}/nosuch.py' does not exist"),
    ("nosuch_module:Tiny", "cannot import module 'nosuch_module' (ModuleNotFoundError: No"),
    ("importer.py:Tiny", "(ModuleNotFoundError: No module named 'missing_dependency')"),
    ("broken.py:Missing", "'broken.py' has no attribute 'Missing'"),
    ("broken.py:NotAProblem", "NotAProblem is not a subclass of rabo.BilevelProblem"),
    ("nosuch", "unknown problem 'nosuch'; allowed: FILE.py:Class, fewshot, losstuning, module"),
    ("broken.py:WrongArgs", "'WrongArgs' cannot be built as WrongArgs(clients, seed, data_dir"),
    ("broken.py:FixedClients", "'FixedClients' has num_clients=5, but the run has clients=10"),
    ("broken.py:NoPlan", "problem class 'NoPlan' sets no plan"),
    ("broken.py:BadInit", "'BadInit': init_params(seed) must return (x, y), two dicts of name"),
    ("broken.py:NoDefaults", "rounds is not set: give it (--set rounds=VALUE) or put it in"),
    ("broken.py:NoDefaults", "the defaults of problem class 'NoDefaults'"),
])
def test_bad_reference_or_broken_contract_is_one_line(problem, message, tmp_path, monkeypatch,
                                                      capsys):
    (tmp_path / "broken.py").write_text(BROKEN)
    (tmp_path / "importer.py").write_text("import missing_dependency\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", problem, "--no-progress", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_problem_object_built_for_other_clients_names_its_class(tiny):
    """Regression: a problem built for 5 clients run with 10 was an IndexError in user code."""
    problem = get_problem("tiny.py:Tiny")(clients=5)
    with pytest.raises(ConfigError, match="problem class 'Tiny' has num_clients=5, but the run "
                                          "has clients=10"):
        rabo.build(rabo.RunConfig(clients=10), problem)
    exp = rabo.build(rabo.RunConfig(clients=5, capacities=[1.0], method="fedmbo"), problem)
    assert exp.config.problem == "tiny" and math.isclose(exp.config.outer_lr, 0.5)



WRONG_PLAN = '''
import sys
sys.path.insert(0, {examples!r})
import rabo
from residual_digits import ResidualDigits


class OwnShortcut(ResidualDigits):
    """The example with a shape-compatible wrong plan: block2's shortcut in its own group."""

    def __init__(self, clients, seed=0, data_dir=None, **options):
        super().__init__(clients, seed, data_dir, **options)
        dims = dict(self.plan.dims)
        own = dims["block2.conv2.weight"][0]
        for name in ("block2.shortcut.0.weight", "block2.shortcut.1.weight",
                     "block2.shortcut.1.bias"):
            dims[name] = (rabo.Axis("own"),) + dims[name][1:]
        self.plan = rabo.ChannelPlan(self.plan.groups | {{"own": self.plan.groups[own.group]}},
                                     dims)
'''


def test_building_a_run_checks_the_plan_on_the_problems_models(tmp_path, capsys):
    """A wrong but shape-compatible plan of a user's model is refused when the run is built
    (check_plan on ``plan_models()``), in one line naming the group, before any round or file;
    the example's own traced plan passes the same check."""
    examples = str(Path(__file__).resolve().parent.parent / "examples")
    (tmp_path / "wrong.py").write_text(WRONG_PLAN.format(examples=examples))
    out = tmp_path / "run"
    code = main(["run", f"{tmp_path / 'wrong.py'}:OwnShortcut", "--rounds", "1", "--clients", "5",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("rabo: error:")
    assert "'own'" in err or "block2" in err
    assert not out.exists()
    cfg = rabo.RunConfig(problem=f"{examples}/residual_digits.py:ResidualDigits", clients=5,
                         rounds=1)
    assert rabo.build(cfg).problem.plan_models()[0].module is not None


def test_a_problem_without_plan_models_is_not_checked_and_model_plan_renames():
    from rabo.experiment import model_plan
    from rabo.submodel import Axis, ChannelPlan

    assert rabo.BilevelProblem().plan_models() == ()
    net = torch.nn.Linear(3, 2)
    plan = ChannelPlan({"g": 2, "other": 4}, {"bb.weight": (Axis("g"), None),
                                             "bb.bias": (Axis("g"),), "head.w": (Axis("other"),)})
    got = model_plan(plan, rabo.PlanModel(net, torch.ones(1, 3), "bb."))
    assert got.groups == {"g": 2} and set(got.dims) == {"weight", "bias"}
