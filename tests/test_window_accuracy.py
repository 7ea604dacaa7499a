"""scripts/window_accuracy.py: a finished run's final model evaluated at its clients' submodels."""

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rabo.cli import config_from_json, main
from rabo.experiment import build
from rabo.masks.base import window

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("window_accuracy",
                                              ROOT / "scripts" / "window_accuracy.py")
window_accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(window_accuracy)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for method, capacities in (("static", "1"), ("fedrolex", "0.5")):
        path = out / f"{method}-{capacities}"
        assert main(["run", "losstuning", "--method", method, "--rounds", "3", "--clients", "2",
                     "--capacities", capacities, "--out", str(path), "--quiet"]) == 0
    return out


def test_at_full_capacity_the_submodel_is_the_model(runs):
    full, rounds = window_accuracy.window_accuracies(runs / "static-1", 2)
    assert rounds == {1: [pytest.approx(full, abs=1e-12)], 2: [pytest.approx(full, abs=1e-12)]}


def test_each_round_is_fedrolexs_window_at_that_round(runs):
    """Two clients at ½ share one window per round (one distinct submodel): ⌈C/2⌉ channels from
    t mod C in every group, built here by hand from the final model."""
    run = runs / "fedrolex-0.5"
    _, rounds = window_accuracy.window_accuracies(run, 3)
    problem = build(config_from_json(json.loads((run / "config.json").read_text()), "c")).problem
    y = {k[2:]: v for k, v in load_file(run / "final.safetensors").items() if k[:2] == "y."}
    for t, accs in rounds.items():
        index = {g: window(c, t % c, (c + 1) // 2) for g, c in problem.plan.groups.items()}
        sub = problem.plan.extract(y, index)
        assert accs == [pytest.approx(problem.evaluate({}, sub, final=False)["accuracy"],
                                      abs=1e-12)]
