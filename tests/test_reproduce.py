"""``rabo reproduce``: the pipeline writes every run, a table and a plot, with sane numbers."""

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from rabo import checkpoint
from rabo.cli import main
from rabo.errors import UnknownNameError
from rabo.report import Run
from rabo.reproduce import FEWSHOT_METHODS, FIG6_METHODS, ORDERING, difference

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def _check_fig6(out: Path, dataset: str, max_bytes_ratio: float) -> None:
    rows = list(csv.DictReader((out / "fig6_runs.csv").open()))
    assert [r["method"] for r in rows] == list(FIG6_METHODS)
    for r in rows:
        assert r["setting"] == dataset and 0.0 <= float(r["final_accuracy"]) <= 1.0
        assert math.isfinite(float(r["flops_ratio"])) and float(r["bytes_ratio"]) > 0
    by = {r["method"]: r for r in rows}
    assert float(by["fedmbo"]["flops_ratio"]) == 1.0
    # half-width submodels: the MLP's one hidden layer scales with r (0.5), the CNN's with r²
    assert float(by["rabo"]["bytes_ratio"]) <= max_bytes_ratio
    assert float(by["rafbo"]["bytes_ratio"]) <= max_bytes_ratio
    # one seed: the summary row is the run's own accuracy and cost
    summary = list(csv.DictReader((out / "fig6.csv").open()))
    assert [(s["setting"], s["method"], s["seeds"], s["mean"], s["bytes_ratio"])
            for s in summary] == [(dataset, r["method"], "1", r["final_accuracy"],
                                   r["bytes_ratio"]) for r in rows]
    png = (out / f"fig6_{dataset}_accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    md = (out / "fig6.md").read_text()
    assert md.count("\n") == len(FIG6_METHODS) + 2
    assert "±" not in md          # loss tuning logs no interval: the mean alone, no "± 0.00"
    # the paper's ordering among fig6's methods (not rabo-cov, rafbo-cov, protonet, maml)
    checks = list(csv.DictReader((out / "fig6_ordering.csv").open()))
    assert [c["comparison"] for c in checks] == [
        f"{a} − {b}" for a, b in ORDERING
        if not {"rabo-cov", "rafbo-cov", "protonet", "maml"} & {a, b}]
    for c in checks:              # one run each, no interval: by the sign alone
        assert (c["ci95"], c["within_noise"]) == ("", "")
        assert c["verdict"] == ("holds?" if float(c["difference"]) >= 0 else "fails?")
    for m in FIG6_METHODS:
        assert (out / dataset / m / "metrics.jsonl").exists()


def test_fig6_quick_on_digits(tmp_path):
    out = tmp_path / "fig6"
    assert main(["reproduce", "fig6", "--quick", "--dataset", "digits", "--out", str(out),
                 "--quiet"]) == 0
    _check_fig6(out, "digits", max_bytes_ratio=0.51)
    # finished runs are reused: a second call rewrites the table without rerunning
    before = (out / "digits" / "rabo" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["reproduce", "fig6", "--quick", "--dataset", "digits", "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "digits" / "rabo" / "metrics.jsonl").stat().st_mtime_ns == before
    # a second seed trains only the seed-1 runs; each seed's cost is relative to its own
    # FedMBO run (the digits runs' FLOPs differ a little by seed)
    assert main(["reproduce", "fig6", "--quick", "--dataset", "digits", "--out", str(out),
                 "--quiet", "--seeds", "2"]) == 0
    assert (out / "digits" / "rabo" / "metrics.jsonl").stat().st_mtime_ns == before
    rows = _rows(out / "fig6_runs.csv")
    assert [(r["method"], r["seed"]) for r in rows[:2]] == [("fedmbo", "0"), ("fedmbo", "1")]
    assert rows[0]["gflops"] != rows[1]["gflops"]
    assert [float(r["flops_ratio"]) for r in rows[:2]] == [1.0, 1.0]
    assert [float(r["bytes_ratio"]) for r in rows[:2]] == [1.0, 1.0]


@pytest.mark.slow
def test_fig6_quick_on_fashion_mnist(tmp_path):
    out = tmp_path / "fig6"
    assert main(["reproduce", "fig6", "--quick", "--data-dir", DATA, "--out", str(out),
                 "--quiet"]) == 0
    _check_fig6(out, "fashion-mnist", max_bytes_ratio=0.27)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _check_accuracy(row: dict[str, str]) -> None:
    acc, ci = float(row["final_accuracy"]), float(row["accuracy_ci95"])
    assert 0.0 <= acc <= 1.0 and 0.0 < ci < 0.5


def _strip_models(out: Path) -> None:
    """Leave only what results/ commits: delete model files and checkpoints."""
    for model in out.rglob("*.safetensors"):
        model.unlink()
    for kept in list(out.rglob("checkpoint")):
        shutil.rmtree(kept)


def test_table2_and_fig4_quick_on_omniglot(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fewshot"
    args = ["--quick", "--settings", "5w1s", "--data-dir", DATA, "--out", str(out), "--quiet"]
    assert main(["reproduce", "table2", *args]) == 0
    rows = _rows(out / "table2_runs.csv")
    assert [r["method"] for r in rows] == list(FEWSHOT_METHODS)
    for r in rows:
        assert r["setting"] == "5w1s" and r["rounds"] == "2"
        _check_accuracy(r)
        assert 0.0 < float(r["flops_ratio"]) <= 1.0 and 0.0 < float(r["bytes_ratio"]) <= 1.0
    # one seed: the summary's mean and ci95 are the run's accuracy and episode interval
    summary = _rows(out / "table2.csv")
    assert list(summary[0])[:5] == ["setting", "method", "seeds", "mean", "ci95"]
    assert [(s["method"], s["seeds"], s["mean"], s["ci95"]) for s in summary] == [
        (r["method"], "1", r["final_accuracy"], r["accuracy_ci95"]) for r in rows]
    md = (out / "table2.md").read_text().splitlines()
    assert md[0] == "| method | 5w1s |" and len(md) == len(FEWSHOT_METHODS) + 2
    assert all(re.fullmatch(r"\| [\w-]+ \| \d+\.\d\d ± \d+\.\d\d \|", line) for line in md[2:])
    # every finished run keeps its final per-episode accuracies as text
    episodes = _rows(out / "5w1s" / "rabo-cov" / "episodes.csv")
    assert [e["episode"] for e in episodes] == [str(e) for e in range(1, 21)]
    assert (out / "table2_5w1s_accuracy.png").read_bytes().startswith(b"\x89PNG")
    # the final evaluation keeps its per-episode accuracies (the earlier ones do not), so the
    # ordering table's differences are paired: their mean is the difference of the means
    lines = [json.loads(line) for line in (out / "5w1s" / "rabo" / "metrics.jsonl").open()]
    assert "episode_accuracies" not in lines[0] and len(lines[-1]["episode_accuracies"]) == 20
    assert math.isclose(sum(lines[-1]["episode_accuracies"]) / 20, lines[-1]["accuracy"])
    acc = {r["method"]: float(r["final_accuracy"]) for r in rows}
    checks = _rows(out / "table2_ordering.csv")
    assert [c["comparison"] for c in checks] == [f"{a} − {b}" for a, b in ORDERING]
    for c, (a, b) in zip(checks, ORDERING):
        assert c["pairing"] == "episodes" and c["holds"] == str(float(c["difference"]) >= 0)
        assert math.isclose(float(c["difference"]), 100 * (acc[a] - acc[b]), abs_tol=1e-9)
        assert 0.0 <= float(c["ci95"]) < 100
    # over text alone (no model files, no checkpoints) the same command trains nothing and
    # writes the same bytes
    tables = {p: p.read_bytes() for p in out.glob("table2*")}
    assert len(tables) == 6
    _strip_models(out)
    with monkeypatch.context() as patch:
        patch.setattr("rabo.reproduce.run", _trains)
        assert main(["reproduce", "table2", *args]) == 0
    assert {p: p.read_bytes() for p in out.glob("table2*")} == tables
    _check_other_settings_are_tabulated_not_trained(out, args, monkeypatch, capsys)
    # fig4 reuses table2's fedmbo, rabo and rafbo runs (same configs) and adds the C_x runs
    with monkeypatch.context() as patch:
        patch.setattr("rabo.reproduce.run",
                      _trains_only({f"{m}-{c}" for m in ("rabo", "rafbo") for c in ("cx1", "cx5")}))
        assert main(["reproduce", "fig4", *args]) == 0
    fig4 = {r["run"]: r for r in _rows(out / "fig4.csv")}
    assert list(fig4) == ["fedmbo", "rabo", "rafbo", "rabo-cx1", "rabo-cx5", "rafbo-cx1",
                          "rafbo-cx5"]
    assert float(fig4["fedmbo"]["flops_ratio"]) == 1
    assert float(fig4["rabo"]["flops_ratio"]) <= 0.30
    assert float(fig4["rafbo"]["bytes_ratio"]) <= 0.30
    # the channel cover the segments were designed for (hand count: 9 + 1 and 5 + 5 clients
    # per half), as the rounds logged it
    for m in ("rabo", "rafbo"):
        assert [fig4[f"{m}-{c}"]["min_channel_cover_x"] for c in ("cx1", "cx5")] == ["1", "5"]
    checks = _rows(out / "fig4_ordering.csv")
    assert [c["comparison"] for c in checks] == ["rabo-cx5 − rabo-cx1", "rafbo-cx5 − rafbo-cx1"]
    assert {c["pairing"] for c in checks} == {"episodes"}
    for name in ("fig4_cost_5w1s.png", "fig4_5w1s_accuracy.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def _check_other_settings_are_tabulated_not_trained(out: Path, args: list[str], monkeypatch,
                                                    capsys) -> None:
    """A setting in ``out`` that was not asked for is tabulated from its runs, not trained, so
    rerunning one setting keeps the others' rows (here 5w1s's runs, under 5w5s's configs, pose
    as 5w5s's, at two seeds), at the seeds they were made at, not at the asked ``--seeds``; one
    whose runs were made with another config is left out in a line."""
    from rabo.experiment import build
    from rabo.reproduce import fewshot_base, setting

    base, file = fewshot_base(DATA, True, 0, None)
    for m in FEWSHOT_METHODS:
        config = build(setting(base, "5w5s", file, method=m)).config
        for run, seed in ((m, 0), (f"{m}-seed1", 1)):
            shutil.copytree(out / "5w1s" / m, out / "5w5s" / run)
            config.seed = seed
            (out / "5w5s" / run / "config.json").write_text(json.dumps(config.to_dict()))
    shutil.copytree(out / "5w1s" / "rabo", out / "20w1s" / "rabo")      # 5w1s's config
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr("rabo.reproduce.run", _trains)
        assert main(["reproduce", "table2", *args]) == 0
        err = capsys.readouterr().err
        tables = {p.name: p.read_bytes() for p in out.glob("table2*")}
        asked = ["5w5s,5w1s" if a == "5w1s" else a for a in args]
        assert main(["reproduce", "table2", *asked, "--seeds", "2", "--tables-only"]) == 0
    assert "setting 20w1s left out of the tables: " in err and "20w1s/rabo holds a run" in err
    summary = _rows(out / "table2.csv")
    assert [s["setting"] for s in summary] == ["5w1s"] * 11 + ["5w5s"] * 11
    assert [s["seeds"] for s in summary] == ["1"] * 11 + ["2"] * 11
    for one, two in zip(summary[:11], summary[11:]):      # two seeds of equal runs: ± 0
        assert math.isclose(float(two["mean"]), float(one["mean"]))
        assert float(two["ci95"]) == 0.0
    assert {c["pairing"] for c in _rows(out / "table2_ordering.csv")
            if c["setting"] == "5w5s"} == {"seeds"}
    assert (out / "table2.md").read_text().splitlines()[0] == "| method | 5w1s | 5w5s |"
    # asking for both (in another order, at two seeds: 5w1s's second is missing) writes the
    # same bytes, so the first call, asking for 5w1s at one seed, kept 5w5s's two
    assert {p.name: p.read_bytes() for p in out.glob("table2*")} == tables
    shutil.rmtree(out / "5w5s")
    shutil.rmtree(out / "20w1s")


def _trains_only(names: set[str]):
    """A stand-in for ``rabo.reproduce.run`` that fails a test if any run but ``names``
    trains, and trains those."""
    from rabo.runtime.loop import run

    def train(exp, path, **kw):
        assert path.name in names, f"{path} trained"
        return run(exp, path, **kw)
    return train


def _run(*rows: dict) -> Run:
    return Run(Path("run"), {}, [{"round": 1}, *rows])


def test_difference_is_paired_over_common_episodes_else_from_the_two_intervals():
    a = _run({"accuracy": 0.75, "accuracy_ci95": 0.2, "episode_accuracies": [1.0, 0.5, 0.75]})
    b = _run({"accuracy": 5 / 12, "accuracy_ci95": 0.1, "episode_accuracies": [0.5, 0.5, 0.25]})
    # d = (50, 0, 50) points: mean 100/3, sd 50/√3, ci = 1.96·(50/√3)/√3 = 32.67 < 33.33
    d = difference([a], [b])
    assert d["pairing"] == "episodes" and d["holds"] and d["within_noise"] is False
    assert math.isclose(d["difference"], 100 / 3) and math.isclose(d["ci95"], 1.96 * 50 / 3)
    old = _run({"accuracy": 0.7, "accuracy_ci95": 0.04})     # a run logged before the change
    d = difference([old], [a])
    assert d["pairing"] == "none" and not d["holds"] and d["within_noise"]
    assert math.isclose(d["difference"], -5.0)
    assert math.isclose(d["ci95"], 100 * math.hypot(0.04, 0.2))
    assert difference([_run({"inner_loss": 1.0})], [a])["difference"] is None


def test_over_seeds_cells_and_differences_take_the_seeds_t_interval():
    from rabo.reproduce import accuracy_cell, seed_interval

    # 0.90, 0.92, 0.94: mean 0.92, sd 0.02, t(.975, 2) = 4.3027: half-width 0.049683
    mean, ci = seed_interval([0.90, 0.92, 0.94])
    assert math.isclose(mean, 0.92) and math.isclose(ci, 4.302653 * 0.02 / math.sqrt(3),
                                                     rel_tol=1e-6)
    rows = [{"final_accuracy": v, "accuracy_ci95": 0.001} for v in (0.90, 0.92, 0.94)]
    assert accuracy_cell(rows) == "92.00 ± 4.97 (3 seeds)"
    assert accuracy_cell(rows[:1]) == "90.00 ± 0.10"
    assert accuracy_cell([{"final_accuracy": 0.9, "accuracy_ci95": None}]) == "90.00"
    assert accuracy_cell([*rows, {"final_accuracy": None}]) == "—"
    # per-seed differences (−1, 3) points, paired by seed (episodes ignored): mean 1,
    # sd 2√2, t(.975, 1) = 12.706: half-width 12.706·2√2/√2 = 25.41
    a = [_run({"accuracy": 0.90, "episode_accuracies": [1.0, 0.8]}), _run({"accuracy": 0.93})]
    b = [_run({"accuracy": 0.91, "episode_accuracies": [0.9, 0.9]}), _run({"accuracy": 0.90})]
    d = difference(a, b)
    assert d["pairing"] == "seeds" and d["holds"] and d["within_noise"] and d["verdict"] == "tie"
    assert math.isclose(d["difference"], 1.0) and math.isclose(d["ci95"], 25.4124, rel_tol=1e-5)


def test_seed_runs_names_and_seeds_and_leaves_the_config_alone():
    from rabo.config import RunConfig
    from rabo.reproduce import seed_runs

    config = RunConfig(method="rabo", seed=3, problem_options={"ways": 5})
    runs = seed_runs("rabo", config, 3)
    assert {n: c.seed for n, c in runs.items()} == {"rabo": 3, "rabo-seed4": 4, "rabo-seed5": 5}
    runs["rabo-seed4"].problem_options["ways"] = 20
    assert config.seed == 3 and config.problem_options == {"ways": 5}
    assert list(seed_runs("rabo", config, 1)) == ["rabo"]


def _seeded_grid() -> dict:
    from rabo.reproduce import fewshot_base, setting

    base, file = fewshot_base(DATA + "/omniglot", True, 0, None)
    return {"5w1s": {m: setting(base, "5w1s", file, method=m) for m in ("rabo", "static")}}


@pytest.fixture(scope="module")
def seeded_table(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A quick 5w1s table of rabo and static at two seeds (4 runs), with its files."""
    from rabo.reproduce import seeded_table

    out = tmp_path_factory.mktemp("seeded")
    files = seeded_table(out, "t", _seeded_grid(), "method", False, (("rabo", "static"),),
                          seeds=2)
    return out, files


def test_a_seeded_seeded_table_runs_every_seed_and_pairs_the_ordering_by_seed(seeded_table):
    from rabo.reproduce import seed_interval

    tmp_path, _ = seeded_table
    rows = _rows(tmp_path / "t_runs.csv")
    assert [(r["method"], r["seed"]) for r in rows] == [("rabo", "0"), ("rabo", "1"),
                                                        ("static", "0"), ("static", "1")]
    assert sorted(p.name for p in (tmp_path / "5w1s").iterdir()) == [
        "rabo", "rabo-seed1", "static", "static-seed1"]
    acc = [float(r["final_accuracy"]) for r in rows]
    assert acc[0] != acc[1]          # another seed: other data, other test episodes
    (check,) = _rows(tmp_path / "t_ordering.csv")
    assert check["pairing"] == "seeds"
    assert math.isclose(float(check["difference"]),
                        100 * ((acc[0] - acc[2]) + (acc[1] - acc[3])) / 2, abs_tol=1e-9)
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[2].startswith(f"| rabo | {100 * (acc[0] + acc[1]) / 2:.2f} ± ")
    summary = _rows(tmp_path / "t.csv")
    assert [(s["setting"], s["method"], s["seeds"], s["rounds"]) for s in summary] == [
        ("5w1s", "rabo", "2", "2"), ("5w1s", "static", "2", "2")]
    for s, pair in zip(summary, (acc[:2], acc[2:])):
        mean, ci = seed_interval(pair)
        assert math.isclose(float(s["mean"]), mean) and math.isclose(float(s["ci95"]), ci)
    for run in ("rabo", "static-seed1"):
        last = json.loads((tmp_path / "5w1s" / run / "metrics.jsonl").read_text().splitlines()[-1])
        episodes = _rows(tmp_path / "5w1s" / run / "episodes.csv")
        assert [float(e["accuracy"]) for e in episodes] == last["episode_accuracies"]
        assert [int(e["episode"]) for e in episodes] == list(range(1, 21))


def test_a_rerun_over_text_results_alone_trains_nothing_and_writes_the_same_bytes(
        seeded_table, monkeypatch):
    """The committed results/ hold no model files or checkpoints: a reproduction over them
    reuses every run and rebuilds byte-identical tables and plots."""
    from rabo import reproduce

    out, files = seeded_table
    assert {f.name for f in files} == {"t.csv", "t_runs.csv", "t.md", "t_5w1s_accuracy.png",
                                       "t_ordering.csv", "t_ordering.md"}
    before = {f: f.read_bytes() for f in files}
    _strip_models(out)
    texts = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.json*")}
    monkeypatch.setattr(reproduce, "run", _trains)
    again = reproduce.seeded_table(out, "t", _seeded_grid(), "method", False,
                                    (("rabo", "static"),), seeds=2)
    assert again == files and {f: f.read_bytes() for f in files} == before
    assert b"Software" not in before[out / "t_5w1s_accuracy.png"]     # no matplotlib version
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.json*")} == texts


def test_tables_only_tabulates_the_finished_runs_trains_nothing_and_names_the_rest(
        seeded_table, tmp_path, monkeypatch, capsys):
    """A reproduction in progress (committed runs of some seeds) gives its tables without
    training: a cell's seeds are those finished, the ordering pairs the seeds both finished."""
    from rabo import reproduce

    source, _ = seeded_table
    out = tmp_path / "partial"
    shutil.copytree(source, out)
    _strip_models(out)                # text alone, as committed
    for stale in out.glob("t*"):
        stale.unlink()
    metrics = out / "5w1s" / "rabo-seed1" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:1]))  # 1 of 2 rounds
    acc = {r["method"] + r["seed"]: float(r["final_accuracy"])
           for r in _rows(source / "t_runs.csv")}
    monkeypatch.setattr(reproduce, "run", _trains)
    reproduce.seeded_table(out, "t", _seeded_grid(), "method", False, (("rabo", "static"),),
                           seeds=3, train=False)
    assert ("3 of 6 runs not finished, left out: 5w1s/rabo-seed1, 5w1s/rabo-seed2, "
            "5w1s/static-seed2") in capsys.readouterr().err
    assert [(r["method"], r["seed"]) for r in _rows(out / "t_runs.csv")] == [
        ("rabo", "0"), ("static", "0"), ("static", "1")]
    rabo, static = _rows(out / "t.csv")
    assert (rabo["seeds"], float(rabo["mean"])) == ("1", acc["rabo0"])
    assert static["seeds"] == "2"
    assert math.isclose(float(static["mean"]), (acc["static0"] + acc["static1"]) / 2)
    (check,) = _rows(out / "t_ordering.csv")          # seed 0 alone: paired over its episodes
    assert check["pairing"] == "episodes"
    assert math.isclose(float(check["difference"]), 100 * (acc["rabo0"] - acc["static0"]),
                        abs_tol=1e-9)
    assert not (out / "5w1s" / "rabo-seed2").exists()


def test_methods_trains_only_those_and_tabulates_the_others_finished_runs(
        seeded_table, tmp_path, monkeypatch, capsys):
    """``methods``: rabo's unfinished seed trains; static's is named and left out; static's
    finished seed is still in the tables."""
    from rabo import reproduce

    source, _ = seeded_table
    out = tmp_path / "partial"
    shutil.copytree(source, out)
    _strip_models(out)
    for stale in out.glob("t*"):
        stale.unlink()
    for run in ("rabo-seed1", "static-seed1"):
        shutil.rmtree(out / "5w1s" / run)
    monkeypatch.setattr(reproduce, "run", _trains_only({"rabo-seed1"}))
    reproduce.seeded_table(out, "t", _seeded_grid(), "method", False, (("rabo", "static"),),
                           seeds=2, methods=["rabo"])
    assert "1 of 4 runs not finished, left out: 5w1s/static-seed1" in capsys.readouterr().err
    assert [(r["method"], r["seed"]) for r in _rows(out / "t_runs.csv")] == [
        ("rabo", "0"), ("rabo", "1"), ("static", "0")]
    assert [(r["method"], r["seeds"]) for r in _rows(out / "t.csv")] == [("rabo", "2"),
                                                                         ("static", "1")]
    assert not (out / "5w1s" / "static-seed1").exists()


def test_place_lays_the_markdown_table_out(seeded_table, tmp_path, monkeypatch):
    """``place(setting, run)`` gives each cell's row and column: here the seed-averaged cells of
    rabo and static as one row with a column per method."""
    from rabo import reproduce

    source, _ = seeded_table
    out = tmp_path / "placed"
    shutil.copytree(source, out)
    monkeypatch.setattr(reproduce, "run", _trains)
    reproduce.seeded_table(out, "t", _seeded_grid(), "method", False, seeds=2,
                           place=lambda setting, run: (setting, f"{run} accuracy"))
    cells = {r["method"]: reproduce.accuracy_cell([
        {"final_accuracy": float(x["final_accuracy"])} for x in _rows(out / "t_runs.csv")
        if x["method"] == r["method"]]) for r in _rows(out / "t.csv")}
    assert (out / "t.md").read_text().splitlines() == [
        "| method | rabo accuracy | static accuracy |", "|---|---|---|",
        f"| 5w1s | {cells['rabo']} | {cells['static']} |"]


def test_set_changes_every_run_over_the_experiment_s_settings(tmp_path, monkeypatch, capsys):
    """``--set`` on a reproduction: the run that trains has it in its config.json (over
    --quick's rounds and the packaged 5w1s settings); the tables then need the same pairs,
    since a run is reused only under its own config."""
    from rabo import reproduce

    out = tmp_path / "resnet"
    args = ["reproduce", "table2", "--quick", "--settings", "5w1s", "--data-dir",
            DATA + "/omniglot", "--out", str(out), "--quiet", "--methods", "protonet"]
    sets = ["--set", "rounds=1", "--set", "problem.lam=0.5", "--set", "problem.feature_rms=0"]
    assert main([*args, *sets]) == 0
    config = json.loads((out / "5w1s" / "protonet" / "config.json").read_text())
    assert (config["rounds"], config["outer_lr"]) == (1, 0.01)     # --set; the method table
    assert config["problem_options"]["lam"] == 0.5 and config["problem_options"]["ways"] == 5
    assert config["problem_options"]["feature_rms"] == 0.0
    assert [r["method"] for r in _rows(out / "table2_runs.csv")] == ["protonet"]
    monkeypatch.setattr(reproduce, "run", _trains)
    assert main([*args, *sets, "--tables-only"]) == 0
    capsys.readouterr()
    assert main([*args, "--set", "rounds=1", "--tables-only"]) == 2
    assert "holds a run with problem.feature_rms=0.0, not 1.5: give the options it was made " \
           "with (--quick, --config, --set," in capsys.readouterr().err


def test_set_refuses_what_the_experiment_sets_itself():
    """A key the experiment sets by its own flags, or varies between one method's runs (Table
    III's clients), is refused; an unknown key or value is the config's one-line error."""
    from rabo.errors import ConfigError
    from rabo.reproduce import fewshot_base, setting, with_sets

    base, file = fewshot_base(None, True, 0, None)
    grid = {"5w1s": {f"rabo-M{n}": setting(base, "5w1s", file, method="rabo", clients=n)
                     for n in (10, 20)}}
    changed = with_sets(grid, {"problem.backbone": "resnet12", "eval_every": "3"}, "table3")
    assert [(c.clients, c.eval_every, c.problem_options["backbone"], c.rounds)
            for c in changed["5w1s"].values()] == [(10, 3, "resnet12", 2), (20, 3, "resnet12", 2)]
    assert grid["5w1s"]["rabo-M10"].eval_every == 1                 # the grid is left as it is
    assert with_sets(grid, {}, "table3") is grid
    for key, message in [
            ("clients", "--set clients: table3 varies clients between its rabo runs in 5w1s"),
            ("method", ("--set method: table3 sets method itself (each run's; choose runs "
                        "with --methods)")),
            ("problem.shots", ("--set problem.shots: table3 sets problem.shots itself (give "
                               "--settings)")),
            ("seed", "--set seed: table3 sets seed itself (give --seed and --seeds)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            with_sets(grid, {key: "5"}, "table3")
    with pytest.raises(UnknownNameError, match="unknown config key 'roundz'"):
        with_sets(grid, {"roundz": "5"}, "table3")
    with pytest.raises(ConfigError, match="eval_every='often' is not of type int"):
        with_sets(grid, {"eval_every": "often"}, "table3")


@pytest.mark.slow
def test_table3_quick_on_omniglot(tmp_path):
    out = tmp_path / "table3"
    assert main(["reproduce", "table3", "--quick", "--data-dir", DATA, "--out", str(out),
                 "--quiet"]) == 0
    rows = _rows(out / "table3_runs.csv")
    assert [(r["setting"], r["run"]) for r in rows][:2] == [("5w1s", "rabo-M10"),
                                                            ("5w1s", "rabo-M20")]
    assert len(rows) == 32 and rows[8]["run"] == "rabo-cov-M10"
    for r in rows:
        _check_accuracy(r)
    md = (out / "table3.md").read_text().splitlines()     # the paper's layout
    assert md[0] == "| run | 10 clients | 20 clients | 30 clients | 50 clients |"
    assert [line.split(" |")[0] for line in md[2:]] == [
        f"| {s} {m}" for s in ("5w1s", "5w5s") for m in ("rabo", "rafbo", "rabo-cov", "rafbo-cov")]
    checks = _rows(out / "table3_ordering.csv")        # fewer clients ≥ the next more
    assert [(c["setting"], c["comparison"]) for c in checks][:3] == [
        ("5w1s", "rabo-M10 − rabo-M20"), ("5w1s", "rabo-M20 − rabo-M30"),
        ("5w1s", "rabo-M30 − rabo-M50")]
    assert len(checks) == 40 and all(c["pairing"] == "episodes" for c in checks)
    assert [c["comparison"] for c in checks][12:15] == [     # ours: cover ≥ paper's, same M
        "rabo-cov-M10 − rabo-M10", "rabo-cov-M20 − rabo-M20", "rabo-cov-M30 − rabo-M30"]


@pytest.mark.parametrize("args, message", [
    (["table2", "--settings", "7w1s"], "unknown few-shot setting '7w1s'"),
    (["fig6", "--settings", "5w1s"], "fig6 takes neither --settings nor --config"),
    (["table2", "--seeds", "0"], "--seeds 0: must be an integer from 1 to 100"),
    (["table2", "--seeds", "100000000"], "--seeds 100000000: must be an integer from 1 to 100"),
    (["table2", "--tables-only"], "is not a directory of runs; nothing to tabulate"),
    (["table3", "--methods", "rabo,fedmbo", "--data-dir", DATA + "/omniglot"],
     "unknown table3 method 'fedmbo'; allowed: rabo, rabo-cov, rafbo, rafbo-cov"),
    (["fig4", "--set", "policy.segments=[]", "--data-dir", DATA + "/omniglot"],
     "--set policy.segments: fig4 varies policy.segments between its rabo runs in 5w5s"),
    (["fig6", "--set", "problem.dataset=mnist", "--data-dir", DATA + "/fashion-mnist"],
     "--set problem.dataset: fig6 sets problem.dataset itself (give --dataset)"),
    (["table2", "--set", "rounds", "--data-dir", DATA + "/omniglot"],
     "--set 'rounds' is not of the form key=value"),
])
def test_bad_reproduce_options_are_one_line_config_errors(tmp_path, capsys, args, message):
    assert main(["reproduce", *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_tables_only_over_a_directory_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["reproduce", "fig6", "--dataset", "digits", "--tables-only", "--out",
                 str(tmp_path), "--quiet"]) == 2
    assert f"no finished fig6 runs in {str(tmp_path)!r} to tabulate" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_is_reported_and_the_grid_goes_on(tmp_path, capsys, monkeypatch):
    from rabo.config import RunConfig
    from rabo.reproduce import run_grid

    configs = {"bad": RunConfig(method="rabo", rounds=4, outer_lr=1000.0, eval_every=2),
               "good": RunConfig(method="rabo", rounds=2, eval_every=2)}
    paths = run_grid(configs, tmp_path, progress=False)
    assert "bad: round 2: every client's update was NaN or Inf" in capsys.readouterr().err
    assert len((paths[0] / "metrics.jsonl").read_text().splitlines()) == 2
    assert (paths[1] / "final.safetensors").exists()
    # the diverged run ended there: a rerun, even without its checkpoint, trains nothing
    shutil.rmtree(paths[0] / "checkpoint")
    monkeypatch.setattr("rabo.reproduce.run", _trains)
    assert run_grid(configs, tmp_path, progress=False) == paths


def _trains(*args, **kwargs):
    raise AssertionError("a finished run was trained again")


def test_a_run_with_partial_metrics_and_no_checkpoint_starts_over_and_finishes(tmp_path,
                                                                               monkeypatch):
    """A fresh clone of results/ has an unfinished run's text but not its checkpoint: it is
    run again from round 0, into the same files, and files rabo did not write stay."""
    from rabo import reproduce
    from rabo.config import RunConfig
    from rabo.errors import ConfigError

    config = RunConfig(method="rabo", rounds=3, eval_every=3)
    (path,) = reproduce.run_grid({"r": config}, tmp_path, progress=False)
    whole = (path / "metrics.jsonl").read_text().splitlines()
    (path / "final.safetensors").unlink()
    shutil.rmtree(path / "checkpoint")
    (path / "metrics.jsonl").write_text("\n".join(whole[:2]) + "\n" + whole[2][:20])
    (path / "notes.txt").write_text("mine")
    partial = (path / "metrics.jsonl").read_text()
    other = RunConfig(method="rabo", rounds=3, eval_every=3, outer_lr=0.2)
    with pytest.raises(ConfigError, match=r"holds a run with outer_lr=2\.0, not 0\.2"):
        reproduce.run_grid({"r": other}, tmp_path, progress=False)    # never overwritten
    assert (path / "metrics.jsonl").read_text() == partial
    real, calls = reproduce.run, []

    def spy(exp, out, progress, resume):
        calls.append(resume)
        return real(exp, out, progress=progress, resume=resume)

    monkeypatch.setattr(reproduce, "run", spy)
    reproduce.run_grid({"r": config}, tmp_path, progress=False)
    assert calls == [False]
    again = (path / "metrics.jsonl").read_text().splitlines()

    def results(lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert results(again) == results(whole) and (path / "notes.txt").read_text() == "mine"
    # complete metrics without model file or checkpoint: finished, nothing trained
    (path / "final.safetensors").unlink()
    shutil.rmtree(path / "checkpoint")
    monkeypatch.setattr(reproduce, "run", _trains)
    reproduce.run_grid({"r": config}, tmp_path, progress=False)
    assert (path / "metrics.jsonl").read_text().splitlines() == again


def test_an_interrupted_grid_resumes_its_unfinished_run_from_the_checkpoint(tmp_path,
                                                                            monkeypatch):
    """Rerunning a reproduction continues an interrupted run at its last checkpoint (it used to
    start it over) and ends bit-identically to an uninterrupted one."""
    from safetensors.torch import load_file

    from rabo.config import RunConfig
    from rabo.reproduce import run_grid
    from rabo.runtime import loop

    config = RunConfig(method="rabo", rounds=6, eval_every=3, checkpoint_every=2)
    (whole,) = run_grid({"r": config}, tmp_path / "whole", progress=False)
    real, calls, stop = loop.run_round, [], [True]

    def interrupted(exp, state, transport):
        calls.append(state.round)
        if state.round == 5 and stop:       # Ctrl-C during round 6, once
            stop.clear()
            raise KeyboardInterrupt
        return real(exp, state, transport)

    monkeypatch.setattr(loop, "run_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_grid({"r": config}, tmp_path / "cut", progress=False)
    calls.clear()
    (cut,) = run_grid({"r": config}, tmp_path / "cut", progress=False)
    assert calls == [5]      # rounds 1–5 were kept (checkpointed on Ctrl-C), only round 6 ran
    a, b = load_file(str(whole / "final.safetensors")), load_file(str(cut / "final.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (p / "metrics.jsonl").read_text().splitlines()] for p in (whole, cut)]
    assert rows[0] == rows[1]


def test_a_finished_run_with_another_config_is_not_reused(tmp_path, capsys):
    from rabo.config import RunConfig
    from rabo.errors import ConfigError
    from rabo.reproduce import run_grid

    config = RunConfig(method="rabo", rounds=2, eval_every=2)
    (path,) = run_grid({"r": config}, tmp_path, progress=False)
    before = (path / "metrics.jsonl").read_text()
    # the same config, other threads: reused (runtime-only fields do not change results)
    run_grid({"r": RunConfig(method="rabo", rounds=2, eval_every=2, threads=1)}, tmp_path,
             progress=False)
    with pytest.raises(ConfigError, match=r"holds a run with outer_lr=2\.0, not 0\.2"):
        run_grid({"r": RunConfig(method="rabo", rounds=2, eval_every=2, outer_lr=0.2)}, tmp_path,
                 progress=False)
    assert (path / "metrics.jsonl").read_text() == before  # nothing lost


def test_a_finished_run_is_reused_whatever_way_its_data_dir_is_written(tmp_path, monkeypatch):
    from rabo.config import RunConfig
    from rabo.errors import ConfigError
    from rabo.reproduce import run_grid

    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "other")
    (path,) = run_grid({"r": RunConfig(rounds=2, eval_every=2, data_dir="../data")}, tmp_path,
                       progress=False)
    before = (path / "metrics.jsonl").read_text()
    for same in (str(tmp_path / "data"), str(tmp_path / "link"), "../other/../data/"):
        run_grid({"r": RunConfig(rounds=2, eval_every=2, data_dir=same)}, tmp_path,
                 progress=False)
    with pytest.raises(ConfigError, match=r"holds a run with data_dir='\.\./data', not "):
        run_grid({"r": RunConfig(rounds=2, eval_every=2, data_dir=str(tmp_path / "other"))},
                 tmp_path, progress=False)
    assert (path / "metrics.jsonl").read_text() == before


def test_config_file_setting_and_method_tables_refine_the_base_for_their_runs_only(tmp_path):
    from rabo.errors import ConfigError
    from rabo.reproduce import fewshot_base, setting

    config = tmp_path / "fewshot.toml"
    config.write_text('outer_lr = 0.01\ninner_lr = 0.1\n[problem_options]\ntasks = 3\n'
                      '[setting.20w1s]\ninner_lr = 0.4\nouter_lr = 0.02\n'
                      '[setting.20w1s.problem_options]\neval_lr = 0.4\n'
                      '[method.maml]\nouter_lr = 0.002\n'
                      '[method.maml.problem_options]\nmaml_lr = 0.1\n')
    base, file = fewshot_base(DATA + "/omniglot", False, 0, config, validate=True)
    maml = setting(base, "5w5s", file, method="maml")
    rabo = setting(base, "5w5s", file, method="rabo")
    assert (maml.outer_lr, maml.problem_options["maml_lr"]) == (0.002, 0.1)
    assert rabo.outer_lr == 0.01 and "maml_lr" not in rabo.problem_options
    assert maml.problem_options["tasks"] == rabo.problem_options["tasks"] == 3
    assert maml.problem_options["validate"] is True and maml.problem_options["shots"] == 5
    assert rabo.inner_lr == 0.1 and "eval_lr" not in rabo.problem_options
    rabo20, maml20 = (setting(base, "20w1s", file, method=m) for m in ("rabo", "maml"))
    assert (rabo20.inner_lr, rabo20.outer_lr, rabo20.problem_options["eval_lr"]) == (0.4, 0.02, 0.4)
    assert (maml20.inner_lr, maml20.outer_lr) == (0.4, 0.002)        # the method table is last
    config.write_text("[method.mamal]\nouter_lr = 0.1\n")
    with pytest.raises(UnknownNameError, match="'mamal'; allowed: fedavg, fedmbo"):
        fewshot_base(None, False, 0, config)
    config.write_text("[setting.20way]\ninner_lr = 0.4\n")
    with pytest.raises(ConfigError,
                       match=r"'20way' is not an N-way K-shot setting \(allowed: NwKs"):
        fewshot_base(None, False, 0, config)
    config.write_text("[setting.20w1s.problem_options]\nways = 5\n")
    with pytest.raises(ConfigError, match=r"\[setting.20w1s\] table of .* sets ways or shots"):
        fewshot_base(None, False, 0, config)


def test_validate_is_refused_by_fig6(tmp_path, capsys):
    assert main(["reproduce", "fig6", "--validate", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--validate is for the few-shot experiments" in capsys.readouterr().err


def test_reproduce_threads(tmp_path, capsys, monkeypatch):
    import torch

    out = str(tmp_path / "out")
    assert main(["reproduce", "fig6", "--quick", "--threads", "0", "--out", out]) == 2
    assert "--threads 0 must be an integer ≥ 1" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr("rabo.reproduce.EXPERIMENTS", {"fig6": lambda *a, **k: []})
    assert main(["reproduce", "fig6", "--threads", "1", "--out", out]) == 0
    assert seen == [1]


def _results(path: Path) -> list[dict]:
    """A run's metrics.jsonl rows without ``seconds`` (wall time differs from run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def _close(a, b) -> bool:
    """Equal up to float rounding, through nested rows (numbers to 1e-9 relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_a_grid_in_two_worker_processes_gives_the_runs_of_one_after_another(tmp_path, capfd):
    """Randomness is a function of (seed, round, client), so where a run trains does not matter.
    Here both ways run one torch thread a run (the tests' conftest sets 1; 1 // 2 → 1), so the
    numbers agree to rounding; with other thread counts, reductions split differently and
    agree to float tolerance only."""
    from safetensors.torch import load_file

    from rabo.config import RunConfig
    from rabo.reproduce import run_grid

    configs = {m: RunConfig(problem="quadratic", method=m, rounds=3, eval_every=1)
               for m in ("rabo", "rafbo", "fedmbo")}
    configs["bad"] = RunConfig(problem="quadratic", method="fedmbo", rounds=4, eval_every=1,
                               outer_lr=1e300)              # diverges in round 2
    one = run_grid(configs, tmp_path / "one", progress=False)
    capfd.readouterr()
    two = run_grid(configs, tmp_path / "two", progress=True, jobs=2)
    err = capfd.readouterr().err
    for name in configs:      # a line per run started and ended; the divergence named
        assert f"rabo reproduce: {name}: started (" in err
    assert err.count(" done in ") == 3 and err.count(" of 4)") == 7
    assert "rabo reproduce: bad: round 2: every client's update was NaN or Inf" in err
    assert [p.name for p in two] == list(configs)
    assert [len(_results(p)) for p in two] == [3, 3, 3, 2]
    for a, b in zip(one, two):
        assert _close(_results(a), _results(b))
    for a, b in zip(one[:3], two[:3]):
        ta, tb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
        assert ta.keys() == tb.keys() and all(torch_close(ta[k], tb[k]) for k in ta)


def torch_close(a, b) -> bool:
    import torch

    return torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def _task(kind: str) -> tuple[str, str]:
    """A pool task: a worker that dies (exit 3), or an outcome as given."""
    import os

    if kind == "die":
        os._exit(3)
    return ("failed", "boom") if kind == "fail" else ("done", "")


def test_the_pool_replaces_a_worker_that_dies_and_fails_its_task_only():
    from rabo.runtime.pool import FINISHED, STARTED, run_tasks

    events = []
    outcomes = run_tasks(_task, {"a": ("die",), "b": ("ok",), "c": ("fail",), "d": ("ok",)},
                         2, 1, lambda name, event, outcome: events.append((name, event)))
    assert outcomes == {"a": ("failed", "its worker process exited with code 3"),
                        "b": ("done", ""), "c": ("failed", "boom"), "d": ("done", "")}
    assert sorted(events) == sorted([(n, e) for n in "abcd" for e in (STARTED, FINISHED)])


def test_a_run_that_fails_is_named_the_others_run_and_the_grid_fails_after(tmp_path, capsys,
                                                                           monkeypatch):
    from rabo import reproduce
    from rabo.config import RunConfig
    from rabo.errors import DataError, GridError

    real = reproduce.run

    def flaky(exp, out, progress, resume):
        if out.name == "a":
            raise DataError("episodes.bin is truncated")
        return real(exp, out, progress=progress, resume=resume)

    monkeypatch.setattr(reproduce, "run", flaky)
    configs = {n: RunConfig(problem="quadratic", rounds=2, eval_every=2) for n in ("a", "b")}
    with pytest.raises(GridError, match=r"^1 of 2 runs failed: a \(reasons above\)"):
        reproduce.run_grid(configs, tmp_path, progress=False)
    assert capsys.readouterr().err == "rabo reproduce: a: failed: episodes.bin is truncated\n"
    assert len(_results(tmp_path / "b")) == 2


@pytest.mark.parametrize("jobs", ["0", "-1", "100000"])
def test_jobs_out_of_range_is_a_one_line_error(tmp_path, capsys, jobs):
    import os

    assert main(["reproduce", "fig6", "--quick", "--jobs", jobs, "--out",
                 str(tmp_path / "o")]) == 2
    limit = 4 * os.cpu_count()
    assert capsys.readouterr().err == (f"rabo: error: --jobs {jobs}: must be an integer from 1 "
                                       f"to {limit} (4 × this machine's {os.cpu_count()} "
                                       f"cores)\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_a_rerun_finishes_as_an_uninterrupted_grid(tmp_path):
    """SIGINT to `rabo reproduce --jobs 2` once a run is done and two train: exit 130 with one
    line, no worker left, and the same command then ends with the metrics of a sequential run
    (one torch thread a run both ways: --threads 2 shared by 2 jobs, --threads 1)."""
    import os
    import signal
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text('problem = "fewshot"\nrounds = 4\neval_every = 1\ncheckpoint_every = 1\n'
                      "[problem_options]\ntasks = 1\neval_episodes = 5\nfinal_episodes = 10\n")

    def command(out: str, *more: str) -> list[str]:
        return [sys.executable, "-m", "rabo", "reproduce", "fig4", "--config", str(config),
                "--settings", "5w1s", "--data-dir", DATA, "--out", str(tmp_path / out), *more]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    subprocess.run(command("one", "--threads", "1", "--quiet"), env=env, check=True)
    cut = subprocess.Popen(command("two", "--threads", "2", "--jobs", "2"), env=env,
                           stderr=subprocess.PIPE, text=True)
    seen = []
    for line in cut.stderr:
        seen.append(line)
        if " done in " in line:
            break
    workers = _children(cut.pid, "spawn_main")
    assert len(workers) == 2
    cut.send_signal(signal.SIGINT)
    rest = cut.stderr.read()
    assert cut.wait(timeout=120) == 130, seen + [rest]
    assert not [pid for pid in workers if _alive(pid)]
    assert rest.splitlines()[-1] == (f"rabo: interrupted; the runs in {tmp_path / 'two'} are "
                                     f"kept as far as they got: the same command continues "
                                     f"them (finished runs are reused)")
    assert "Traceback" not in rest
    runs = ["5w1s/" + r for r in ("fedmbo", "rabo", "rafbo", "rabo-cx1", "rabo-cx5",
                                   "rafbo-cx1", "rafbo-cx5")]
    # one run was stopped part-way, its rounds so far checkpointed
    stopped = [r for r in runs[:3] if (tmp_path / "two" / r / checkpoint.FILE).exists()
               and not (tmp_path / "two" / r / "final.safetensors").exists()]
    assert stopped, seen + [rest]
    for r in stopped:
        done = checkpoint.peek(tmp_path / "two" / r)["round"]
        assert 1 <= done < 4 and len(_results(tmp_path / "two" / r)) >= done
    again = subprocess.run(command("two", "--threads", "2", "--jobs", "2", "--quiet"), env=env,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    for r in runs:
        assert _close(_results(tmp_path / "one" / r), _results(tmp_path / "two" / r)), r


def _children(pid: int, command: str) -> list[int]:
    """The processes whose parent is ``pid`` and whose command line holds ``command``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and command in (proc / "cmdline").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
