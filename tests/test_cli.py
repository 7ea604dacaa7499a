"""The ``rabo`` command: a run directory from ``rabo run``, and one-line errors (exit 2)."""

import json
import subprocess
import sys

from rabo.cli import main

REQUIRED = {"round", "method", "inner_loss", "outer_loss", "cover_x", "cover_y", "uncovered_x",
            "uncovered_y", "flops", "bytes_down", "bytes_up", "seconds"}


def test_run_writes_config_and_metrics(tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--rounds", "2", "--out", str(out), "--no-progress",
                 "--set", "eval_every=1"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["problem"] == "losstuning" and config["method"] == "rabo"
    assert config["policy"] == "importance" and config["estimator"] == "neumann"
    assert config["clients"] == 10 and config["problem_options"]["dataset"] == "digits"
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    for m in lines:
        assert REQUIRED <= set(m) and 0.0 <= m["accuracy"] <= 1.0
        assert m["cover_x"] == 10            # the VS-loss parameters are never pruned
        assert m["cover_y"] == 2             # nested importance masks: two full clients
    assert (out / "final.safetensors").exists()


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("keep\n")
    assert main(["run", "quadratic", "--rounds", "1", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "keep\n"


def test_config_file_and_set_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "quadratic"\nrounds = 3\n[problem_options]\ndim = 4\n')
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--rounds", "2", "--set", "problem.dim=6",
                 "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["rounds"] == 2 and config["problem_options"]["dim"] == 6


def test_config_file_method_table_applies_to_its_method_only(tmp_path):
    """Regression: a config with ``[method.NAME]`` tables (configs/fewshot.toml) was refused by
    ``rabo run --config`` ("method={...} is not of type str")."""
    from rabo.cli import config_from_args, make_parser

    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "quadratic"\nouter_lr = 0.5\n[method.fedmbo]\nouter_lr = 0.1\n'
                   '[method.fedmbo.problem_options]\ndim = 7\n')

    def config(*argv):
        return config_from_args(make_parser().parse_args(["run", "--config", str(cfg), *argv]))

    fedmbo, rabo = config("--method", "fedmbo"), config("--method", "rabo")
    assert (fedmbo.outer_lr, fedmbo.problem_options) == (0.1, {"dim": 7})
    assert (rabo.outer_lr, rabo.problem_options) == (0.5, {})
    assert config("--method", "fedmbo", "--set", "outer_lr=0.2").outer_lr == 0.2  # --set wins
    shipped = config_from_args(make_parser().parse_args(["run", "fewshot", "--method", "protonet"]))
    assert (shipped.problem, shipped.outer_lr) == ("fewshot", 0.01)
    cfg.write_text('[method.fedmbbo]\nouter_lr = 0.1\n')
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2


def test_config_file_setting_table_applies_to_runs_with_its_ways_and_shots(tmp_path, capsys):
    """``rabo run --config`` takes the ``[setting.NwKs]`` table of the run's ways and shots
    (wherever they are set), below its method table, flags and --set."""
    from rabo.cli import config_from_args, make_parser

    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "fewshot"\ninner_lr = 0.1\n[problem_options]\nshots = 5\n'
                   '[setting.20w5s]\ninner_lr = 0.4\nouter_lr = 0.5\n'
                   '[method.fedmbo]\nouter_lr = 0.1\n')

    def config(*argv):
        return config_from_args(make_parser().parse_args(["run", "--config", str(cfg), *argv]))

    assert config("--method", "rabo").inner_lr == 0.1                        # 5w5s: no table
    twenty = config("--method", "rabo", "--set", "problem.ways=20")
    assert (twenty.inner_lr, twenty.outer_lr) == (0.4, 0.5)
    assert config("--method", "fedmbo", "--set", "problem.ways=20").outer_lr == 0.1
    assert config("--method", "rabo", "--set", "problem.ways=20", "--set",
                  "problem.shots=1").inner_lr == 0.1                          # 20w1s: no table
    assert config("--set", "problem.ways=20", "--set", "inner_lr=0.3").inner_lr == 0.3
    cfg.write_text('problem = "quadratic"\n[setting.5w1s]\nouter_lr = 0.5\n')
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2
    assert "has [setting.NwKs] tables, for problems with ways and shots; 'quadratic' has " \
        "neither" in capsys.readouterr().err


def test_malformed_toml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    assert main(["run", "--config", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot read config file" in err and err.count("\n") == 1


def test_console_script_help_and_error_exit_code():
    rabo = [sys.executable, "-m", "rabo.cli"]
    help_text = subprocess.run(rabo + ["run", "--help"], capture_output=True, text=True,
                               check=False)
    assert help_text.returncode == 0
    for option in ("--method", "--rounds", "--clients", "--capacities", "--seed", "--out",
                   "--data-dir", "--config", "--set"):
        assert option in help_text.stdout
    bad = subprocess.run(rabo + ["run", "--method", "nope"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("rabo: error: unknown method")
    assert "Traceback" not in bad.stderr
