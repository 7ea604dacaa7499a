"""examples/hyper_cleaning.py: a user's own problem run with RABO learns to down-weight the
training samples whose labels were flipped."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hyper_cleaning.py"


def load_example():
    spec = importlib.util.spec_from_file_location("hyper_cleaning", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hyper_cleaning_down_weights_flipped_samples(tmp_path):
    results = load_example().main(rounds=10, out=tmp_path / "run", verbose=False)
    assert results["weight_flipped"] < results["weight_clean"] - 0.05
    assert results["cleaned_accuracy"] > 0.7 > results["initial_accuracy"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 10


def test_hyper_cleaning_script_prints_accuracy_and_weights():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--rounds", "3"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "test accuracy: initial" in done.stdout and "hyper-cleaning" in done.stdout
    assert "flipped labels" in done.stdout


@pytest.mark.slow
def test_hyper_cleaning_beats_uniform_weights_at_default_rounds():
    results = load_example().main(verbose=False)
    assert results["cleaned_accuracy"] > results["uniform_accuracy"]
    assert results["weight_flipped"] < results["weight_clean"] - 0.2
