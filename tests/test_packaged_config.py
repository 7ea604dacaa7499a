"""The few-shot run settings ship inside the package (rabo/configs/fewshot.toml): `rabo run
fewshot` and `rabo reproduce` start from the same file, from a checkout or a wheel, and a
missing or unreadable file is a one-line error, never an empty config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rabo import config as config_module
from rabo.cli import config_from_args, main, make_parser
from rabo.config import packaged_config
from rabo.reproduce import FEWSHOT_METHODS, fewshot_base, setting

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = str(ROOT.parent / "shared" / "data" / "omniglot")


def run_config(*argv: str):
    return config_from_args(make_parser().parse_args(["run", *argv]))


def test_packaged_fewshot_config_holds_the_tuned_settings():
    file = packaged_config("fewshot")
    assert file.base["problem"] == "fewshot" and file.base["outer_lr"] == 0.03
    assert file.settings["20w1s"]["inner_lr"] == 0.4
    assert file.methods["protonet"]["outer_lr"] == 0.01
    assert packaged_config("quadratic").base == {}        # no packaged settings: empty


@pytest.mark.parametrize(("method", "name", "ways", "shots"),
                         [("rabo", "5w1s", 5, 1), ("protonet", "5w5s", 5, 5),
                          ("maml", "20w1s", 20, 1), ("fedmbo", "20w5s", 20, 5)])
def test_rabo_run_fewshot_resolves_the_config_of_rabo_reproduce(method, name, ways, shots):
    """Regression: `rabo run fewshot` without --config took the problem's untuned defaults
    (rounds 100 → the problem's, η_x 0.03 → 0.01, no setting or method table)."""
    base, file = fewshot_base(None, False, 0, None)
    want = setting(base, name, file, method=method).to_dict()
    got = run_config("fewshot", "--method", method, "--set", f"problem.ways={ways}",
                     "--set", f"problem.shots={shots}").to_dict()
    assert got == want
    assert got["rounds"] == 100 and got["problem_options"]["tasks"] == 4


def test_config_flag_replaces_the_packaged_settings(tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text('problem = "fewshot"\nouter_lr = 0.5\n')
    config = run_config("--config", str(cfg), "--method", "protonet")
    assert (config.outer_lr, config.rounds, config.problem_options) == (0.5, None, {})
    assert run_config("fewshot", "--set", "outer_lr=0.2").outer_lr == 0.2   # --set still wins


@pytest.mark.parametrize("command", [["run", "fewshot", "--no-progress"],
                                     ["reproduce", "table2", "--quick", "--quiet"]])
def test_missing_or_unreadable_packaged_config_is_a_one_line_error(command, tmp_path,
                                                                   monkeypatch, capsys):
    """Regression: reproduce.py fell back to {} (untuned settings) without a word when
    configs/fewshot.toml was not beside the source tree, as in a wheel."""
    argv = [*command, "--out", str(tmp_path / "out")]
    monkeypatch.setitem(config_module.PACKAGED_CONFIGS, "fewshot", "missing.toml")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.toml' does not exist" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    # an absolute name replaces the package folder: the package's file made unreadable
    monkeypatch.setitem(config_module.PACKAGED_CONFIGS, "fewshot", str(bad))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read config file {str(bad)!r}" in err
    assert not (tmp_path / "out").exists()


def _normalised(config: dict) -> dict:
    return config | {"data_dir": os.path.realpath(config["data_dir"])}


@pytest.mark.slow
@pytest.mark.skipif(not Path(OMNIGLOT).is_dir(), reason="needs the Omniglot subset")
def test_wheel_outside_the_source_tree_resolves_the_configs_of_the_checkout(tmp_path):
    """Build the wheel (offline, from a copy of the tree), install it into a folder of its own
    and run `rabo reproduce table2 --quick` from there, with the source tree not importable:
    every run's config.json equals what the checkout resolves for the same grid."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(tree)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("rabo-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import rabo; print(rabo.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "rabo" / "__init__.py")
    out = tmp_path / "wheel-run"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rabo", "reproduce", "table2", "--quick",
                           "--settings", "5w1s", "--data-dir", OMNIGLOT, "--out", str(out),
                           "--quiet", "--threads", "1"], check=False, cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=900)
    print(f"rabo reproduce table2 --quick --settings 5w1s from the wheel: "
          f"{time.monotonic() - start:.0f}s")
    assert done.returncode == 0, done.stderr
    from rabo.experiment import build

    base, file = fewshot_base(OMNIGLOT, True, 0, None)
    for method in FEWSHOT_METHODS:
        want = json.loads(json.dumps(build(setting(base, "5w1s", file, method=method))
                                     .config.to_dict()))
        got = json.loads((out / "5w1s" / method / "config.json").read_text())
        assert _normalised(got) == _normalised(want), method
