"""The README's tutorial, run exactly as written: a user's residual CNN problem from a file
reference with rabo, rafbo and fedmbo, a report, and the same problem on `rabo flower local`."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tutorial_commands() -> list[list[str]]:
    """The commands of the README's tutorial code block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Tutorial: your own model, end to end"):]
    block = section[section.index("```\n") + 4:]
    return [shlex.split(line) for line in block[:block.index("```")].splitlines() if line]


def test_the_tutorial_block_is_what_this_test_runs():
    commands = tutorial_commands()
    assert [c[:2] for c in commands] == [["rabo", "run"]] * 3 + [["rabo", "report"],
                                                                   ["rabo", "flower"]]
    assert all("examples/residual_digits.py:ResidualDigits" in c for c in commands[:3])


@pytest.mark.slow
def test_the_readme_tutorial_runs_as_written(tmp_path):
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "residual_digits.py", tmp_path / "examples")
    for command in tutorial_commands():
        done = subprocess.run([sys.executable, "-m", "rabo", *command[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=1800, check=False)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    runs = tmp_path / "runs" / "resdigits"
    final = {m: json.loads((runs / m / "metrics.jsonl").read_text().splitlines()[-1])
             for m in ("rabo", "rafbo", "fedmbo", "flower")}
    for method in ("rabo", "rafbo", "fedmbo"):
        assert final[method]["round"] == 30 and final[method]["accuracy"] > 0.5, final[method]
    assert final["flower"]["round"] == 3
    assert (runs / "report" / "summary.md").exists()
