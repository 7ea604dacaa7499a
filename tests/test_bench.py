"""`rabo bench`: the naive FedNest-style loop ends each workload with the simulator's parameters
(so the timing compares the same math), the roofline is a rate, and the CLI writes its JSON and
refuses bad values in one line."""

import json
import math
import statistics

import pytest
import torch

from rabo.bench import estimate, matmul_flops, runner
from rabo.bench.naive import NaiveLoop
from rabo.bench.runner import Workload, measure
from rabo.cli import main
from rabo.config import RunConfig
from rabo.experiment import build


def _same(config: RunConfig, rounds: int) -> float:
    result = measure(Workload("test", config), rounds=rounds, warmup=0)
    assert result["same_params"] == (result["max_param_diff"] <= 1e-5)
    return result["max_param_diff"]


@pytest.mark.parametrize("coupling", ["diagonal", "dense"])
def test_naive_loop_matches_simulator_on_quadratic(coupling):
    config = RunConfig(problem="quadratic", clients=20, outer_steps=2,
                       problem_options={"coupling": coupling})
    assert _same(config, rounds=2) <= 1e-5


def test_naive_loop_matches_simulator_on_losstuning_digits():
    config = RunConfig(problem="losstuning", clients=4, capacities=[1.0, 0.5, 0.25, 0.0625],
                       inner_steps=3)
    assert _same(config, rounds=2) <= 1e-5


def test_naive_loop_matches_simulator_on_fewshot_synthetic():
    config = RunConfig(problem="fewshot", clients=2, capacities=[1.0, 0.25], inner_steps=2,
                       adapt_steps=2, terms=3, problem_options={"source": "synthetic"})
    assert _same(config, rounds=1) <= 1e-5


def test_naive_loop_moves_the_model():
    """The comparison is not vacuous: two naive rounds change both x and y (y* = 0 at x = 0,
    so y first moves in round 2)."""
    exp = build(RunConfig(problem="quadratic", clients=4, capacities=[1.0, 0.5]))
    loop = NaiveLoop(exp)
    x0, y0 = exp.problem.init_params(exp.config.seed)
    loop.step()
    loop.step()
    assert float((loop.x["x"] - x0["x"]).abs().max()) > 1e-3
    assert float((loop.y["y"] - y0["y"]).abs().max()) > 1e-3


def test_roofline_is_a_positive_finite_rate():
    roof = matmul_flops("cpu", sizes=(64, 128), repeats=2, min_seconds=0.0)
    assert math.isfinite(roof.flops_per_s) and roof.flops_per_s > 0
    assert set(roof.by_size) == {64, 128} and roof.flops_per_s == max(roof.by_size.values())


def test_bench_command_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "QUADRATIC_CLIENTS", (10, 20))
    monkeypatch.setattr("rabo.bench.runner.matmul_flops",
                        lambda device, sizes=None: matmul_flops(device, (64,), 2, 0.0))
    out = tmp_path / "bench.json"
    code = main(["bench", "--workloads", "quadratic", "--rounds", "1", "--warmup", "1",
                 "--threads", "1", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"machine", "roofline", "settings", "workloads", "checks", "wall_seconds"} <= set(report)
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["device"] == "cpu"
    assert report["roofline"]["flops_per_s"] > 0
    assert [r["workload"] for r in report["workloads"]] == ["quadratic-10", "quadratic-20"]
    for row in report["workloads"]:
        assert row["same_params"] is True and row["max_param_diff"] <= 1e-5
        for side in ("simulator", "naive"):
            s = row[side]
            assert s["seconds_per_round"] > 0 and s["flops_per_round"] > 0
            assert s["peak_rss_mib"] > 0 and 0 < s["roofline_fraction"]
        assert row["speedup"] == pytest.approx(row["naive"]["seconds_per_round"]
                                               / row["simulator"]["seconds_per_round"])
        assert row["flop_ratio"] == pytest.approx(row["naive"]["flops_per_round"]
                                                  / row["simulator"]["flops_per_round"])
    checks = report["checks"]
    assert checks["same_params"] is True and "quadratic_growth_exponent" in checks
    assert checks["quadratic_rss_under_4gib"] is True
    table = capsys.readouterr().out
    assert "| quadratic-20 | 20 |" in table and "same params" in table


def test_fewshot_eval_row_times_both_evaluations_and_compares_their_accuracies(
        tmp_path, monkeypatch, capsys):
    """`rabo bench --workloads fewshot-eval` on 3 synthetic episodes: the row's fields (no
    timing assertion: a unit test cannot time), its checks and its table line."""
    monkeypatch.setattr(runner, "EVAL_EPISODES", 3)
    monkeypatch.setattr("rabo.bench.runner.matmul_flops",
                        lambda device, sizes=None: matmul_flops(device, (64,), 2, 0.0))
    out = tmp_path / "bench.json"
    assert main(["bench", "--workloads", "fewshot-eval", "--rounds", "2", "--threads", "1",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["workloads"] == []
    (row,) = report["evaluations"]
    assert (row["workload"], row["episodes"], row["ways"], row["shots"], row["source"]) == \
        ("fewshot-eval", 3, 5, 1, "synthetic")
    assert len(row["seconds"]["loop"]) == len(row["seconds"]["batched"]) == 2
    assert row["loop_seconds"] == pytest.approx(statistics.median(row["seconds"]["loop"]))
    assert row["speedup"] == pytest.approx(row["loop_seconds"] / row["batched_seconds"])
    assert row["same_accuracy"] is True and row["max_accuracy_diff"] <= 1e-6
    assert row["max_logit_diff"] <= 1e-5 and row["accuracy"] == pytest.approx(
        row["loop_accuracy"], abs=1e-6)
    checks = report["checks"]
    assert checks["same_params"] is True and checks["same_accuracy"] is True
    assert checks["eval_speedup"] == row["speedup"]
    assert checks["eval_at_least_5x"] == (row["speedup"] >= 5)
    table = capsys.readouterr().out
    assert "| fewshot-eval (synthetic) | 3 |" in table and "same accuracies: yes" in table
    assert "same params" not in table  # no simulator workload, no vacuous check


@pytest.mark.parametrize("argv, words", [
    (["--workloads", "fewshot,cifar"], ["unknown workload 'cifar'",
                                        "fewshot-compile, fewshot-eval, losstuning",
                                        "quadratic, table2-5w1s"]),
    (["--workloads", ","], ["no workload given"]),
    (["--rounds", "0"], ["rounds=0"]),
    (["--warmup", "-1"], ["warmup=-1"]),
    (["--threads", "0"], ["threads=0"]),
    (["--device", "tpu"], ["device='tpu'", "expected cpu, cuda or cuda:N"]),
    (["--rounds", "two"], ["invalid int value"]),
])
def test_bench_bad_values_exit_2_in_one_line(argv, words, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rabo: error: ")
    for word in words:
        assert word in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device exists here")
def test_bench_cuda_without_a_gpu_is_a_one_line_error(capsys):
    assert main(["bench", "--device", "cuda", "--out", "unused.json"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_table2_column_configs_are_the_reproductions():
    """The estimate times what `rabo reproduce table2 --settings 5w1s` runs: every method, the
    packaged config's 100 rounds, evaluations every 25 and its method tables."""
    configs = estimate.column_configs()
    assert list(configs) == ["fedmbo", "protonet", "maml", "static", "oap", "fedrolex",
                             "fiarse", "rabo", "rafbo", "rabo-cov", "rafbo-cov"]
    for method, config in configs.items():
        assert (config.method, config.rounds, config.eval_every) == (method, 100, 25)
        opts = config.problem_options
        assert (opts["ways"], opts["shots"], opts["tasks"], opts["source"]) == \
            (5, 1, 4, "synthetic")
        assert estimate.evaluations(config) == (3, 3 * 100 + 600)
    assert configs["protonet"].outer_lr == 0.01 and configs["rabo"].outer_lr == 0.03


@pytest.mark.parametrize("rounds, every, expected", [(100, 25, (3, 900)), (10, 3, (3, 900)),
                                                     (4, 5, (0, 600)), (1, 1, (0, 600))])
def test_evaluations_count_rounds_before_the_last_and_their_episodes(rounds, every, expected):
    """Rounds t with t % every == 0 evaluate 100 episodes, the last 600 instead."""
    config = RunConfig(problem="fewshot", rounds=rounds, eval_every=every,
                       problem_options={"eval_episodes": 100, "final_episodes": 600})
    assert estimate.evaluations(config) == expected


def test_table2_estimate_row_is_round_times_rounds_plus_episode_times_episodes(
        tmp_path, monkeypatch, capsys):
    """`rabo bench --workloads table2-5w1s` on two small synthetic configs: run time = s/round ×
    rounds + s/episode × episodes, the linear-head methods share one evaluation timing, the
    total sums the runs, and the table prints a row per method."""
    small = {"problem_options": {"source": "synthetic", "tasks": 1, "eval_episodes": 3,
                                 "final_episodes": 5}, "clients": 2, "rounds": 7,
             "eval_every": 2, "capacities": [1.0, 0.5]}
    monkeypatch.setattr(estimate, "column_configs", lambda seed, data_dir: {
        m: RunConfig(problem="fewshot", method=m, **small) for m in ("rabo", "static")})
    monkeypatch.setattr(estimate, "EVAL_CHUNK", 2)
    monkeypatch.setattr("rabo.bench.runner.matmul_flops",
                        lambda device, sizes=None: matmul_flops(device, (64,), 2, 0.0))
    out = tmp_path / "bench.json"
    assert main(["bench", "--workloads", "table2-5w1s", "--rounds", "2", "--warmup", "0",
                 "--threads", "1", "--out", str(out), "--quiet"]) == 0
    (row,) = json.loads(out.read_text())["estimates"]
    assert row["workload"] == "table2-5w1s" and [r["method"] for r in row["methods"]] == \
        ["rabo", "static"]
    for r in row["methods"]:
        assert (r["rounds"], r["evaluation_rounds"], r["test_episodes"]) == (7, 4, 3 * 3 + 5)
        assert r["run_seconds"] == pytest.approx(7 * r["round_seconds"]
                                                 + 14 * r["episode_seconds"])
    assert row["methods"][0]["episode_seconds"] == row["methods"][1]["episode_seconds"]
    assert row["total_seconds"] == pytest.approx(sum(r["run_seconds"] for r in row["methods"]))
    table = capsys.readouterr().out
    assert "| rabo | " in table and "| static | " in table and "2 runs one after another" in table


def test_compile_payoff_is_compile_time_over_time_saved_a_round():
    """Eager 2.0 s a round (first 3.0), compiled 1.5 s (first 53.0): both first rounds count
    FLOPs (1.0 s), so compiling took 50.5 s and pays off after 50.5 / 0.5 = 101 rounds."""
    eager = {"seconds_per_round": 2.0, "warmup_seconds": [3.0]}
    compiled = {"seconds_per_round": 1.5, "warmup_seconds": [53.0]}
    out = runner.compile_payoff(eager, compiled)
    assert out == pytest.approx({"compile_speedup": 4 / 3, "compile_seconds": 50.5,
                                 "compile_payoff_rounds": 101.0})
    slower = runner.compile_payoff(eager, {"seconds_per_round": 2.5, "warmup_seconds": [9.0]})
    assert slower["compile_payoff_rounds"] == math.inf
    assert math.isnan(runner.compile_payoff(eager, {"seconds_per_round": 1.5,
                                                    "warmup_seconds": []})["compile_seconds"])
