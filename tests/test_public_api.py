"""The public API at the package's top level: what `help(rabo)` lists, and runs that take
paths as str or Path."""

from __future__ import annotations

import json
import pydoc
from pathlib import Path

import pytest

import rabo

PUBLIC = ("BilevelProblem", "RunConfig", "build", "simulate", "hypergradient", "ChannelPlan",
          "RaboError", "ConfigError", "trace_plan", "check_plan", "PlanError", "Params")


def test_help_lists_the_public_api():
    assert set(PUBLIC) <= set(rabo.__all__)
    assert all(hasattr(rabo, name) for name in rabo.__all__)
    text = pydoc.render_doc(rabo, renderer=pydoc.plaintext)
    functions = text[text.index("FUNCTIONS"):]
    for name in ("build(", "simulate = run(", "hypergradient(", "trace_plan(", "check_plan("):
        assert name in functions, name
    classes = text[text.index("CLASSES"):text.index("FUNCTIONS")]
    assert "class BilevelProblem" in classes and "class RunConfig" in classes


@pytest.mark.parametrize("kind", [str, Path])
def test_simulate_takes_the_run_directory_and_data_dir_as_str_or_path(kind, tmp_path):
    """Regression: rabo.runtime.loop.run(exp, "dir") failed with AttributeError on a str,
    and a Path as data_dir could not be written to config.json."""
    config = rabo.RunConfig(problem="quadratic", rounds=2, clients=4, capacities=[1.0],
                            data_dir=kind(tmp_path))
    state = rabo.simulate(rabo.build(config), kind(tmp_path / "run"), progress=False)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["data_dir"] == str(tmp_path) and written["rounds"] == 2
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rows] == [1, 2] and len(state.history) == 2
    assert json.loads(rows[-1])["hypergrad_norm"] == pytest.approx(
        state.history[-1]["hypergrad_norm"], rel=1e-12)
