"""``rabo report``: figures that decode to non-blank images, a summary whose numbers are the
run's metrics, and one-line errors (exit 2) for missing or corrupt run directories."""

import csv
import json
from pathlib import Path

import pytest

from rabo.cli import main
from rabo.config import RunConfig
from rabo.experiment import build
from rabo.report import FIGURES, Run, load_runs, series
from rabo.runtime.loop import run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two quadratic runs (rabo, fedmbo) and one loss-tuning run evaluated every round."""
    root = tmp_path_factory.mktemp("runs")
    configs = {"quad-rabo": RunConfig(problem="quadratic", method="rabo", rounds=5),
               "quad-fedmbo": RunConfig(problem="quadratic", method="fedmbo", rounds=5),
               "lt-rabo": RunConfig(problem="losstuning", method="rabo", rounds=3,
                                    eval_every=1)}
    for name, config in configs.items():
        run(build(config), root / name, progress=False)
    return [root / name for name in configs]


@pytest.fixture(scope="module")
def report_dir(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_is_a_non_blank_png(report_dir, name):
    import matplotlib.image

    path = report_dir / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0
    assert (pixels != pixels[0, 0]).any(axis=-1).any()  # more than one distinct colour


def test_summary_has_one_row_per_run_with_its_numbers(runs, report_dir):
    lines = (report_dir / "summary.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines[2:]]
    assert [r["method"] for r in rows] == ["rabo", "fedmbo", "rabo"]
    assert [r["problem"] for r in rows] == ["quadratic", "quadratic", "losstuning"]
    assert [r["rounds"] for r in rows] == ["5", "5", "3"]
    with open(report_dir / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    for path, row, exact in zip(runs, rows, table):
        m = metrics(path)
        flops = sum(r["flops"] for r in m)
        mbytes = sum(r["bytes_down"] + r["bytes_up"] for r in m) / 1e6
        assert float(row["GFLOPs"]) == pytest.approx(flops / 1e9, rel=1e-3)
        assert float(exact["gflops"]) == flops / 1e9
        assert float(exact["mb"]) == pytest.approx(mbytes, rel=1e-12)
        assert float(row["final f"]) == pytest.approx(m[-1]["outer_loss"], rel=1e-3)
        assert int(row["min C_y"]) == min(r["cover_y"] for r in m)
        assert float(exact["wall_seconds"]) == pytest.approx(sum(r["seconds"] for r in m))
    accuracy = [r["accuracy"] for r in metrics(runs[2])]
    assert float(table[2]["final_accuracy"]) == accuracy[-1]
    assert float(table[2]["best_accuracy"]) == max(accuracy)
    assert rows[0]["final acc"] == "—" and table[0]["final_accuracy"] == ""
    assert int(rows[1]["min C_x"]) == 10 and int(rows[0]["min C_x"]) == 2


def test_labels_name_problem_only_where_a_method_repeats(runs):
    assert [r.label for r in load_runs(runs)] == ["rabo, quadratic", "fedmbo",
                                                  "rabo, losstuning"]


def test_null_values_are_skipped_per_series():
    rows = [{"round": 1, "flops": 10, "bytes_down": 1, "bytes_up": 1, "accuracy": None},
            {"round": 2, "flops": 10, "bytes_down": 1, "bytes_up": 1, "accuracy": 0.5},
            {"round": 3, "flops": 10, "bytes_down": 1, "bytes_up": 1}]
    r = Run(Path("x"), {}, rows)
    assert series(r, "accuracy", "rounds") == ([2], [0.5])
    assert series(r, "accuracy", "flops") == ([20 / 1e9], [0.5])
    assert series(r, "accuracy", "bytes") == ([4 / 1e6], [0.5])


def test_default_out_is_report_inside_the_first_run(runs, capsys):
    assert main(["report", str(runs[1])]) == 0
    written = {p.name for p in (runs[1] / "report").iterdir()}
    # A quadratic run logs no accuracy: its report has no accuracy figures.
    assert written == {n for n in FIGURES if not n.startswith("accuracy")} | {
        "summary.md", "summary.csv"}
    assert str(runs[1] / "report") in capsys.readouterr().out


def test_missing_run_directory_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "does not exist" in err


@pytest.mark.parametrize("broken, expected", [
    ("config.json", "config.json"),
    ("metrics-line", "line 2"),
    ("metrics-empty", "holds no rounds"),
    ("metrics-string", "outer_loss='low' is not a number"),   # was a traceback
])
def test_corrupt_run_directory_is_one_line_exit_2(runs, tmp_path, capsys, broken, expected):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text((runs[0] / "config.json").read_text())
    (d / "metrics.jsonl").write_text((runs[0] / "metrics.jsonl").read_text())
    if broken == "config.json":
        (d / "config.json").unlink()
    elif broken == "metrics-line":
        lines = (d / "metrics.jsonl").read_text().splitlines()
        (d / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]))
    elif broken == "metrics-string":
        lines = (d / "metrics.jsonl").read_text().splitlines()
        row = json.loads(lines[1]) | {"outer_loss": "low"}
        (d / "metrics.jsonl").write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]))
    else:
        (d / "metrics.jsonl").write_text("")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rabo: error:") and err.count("\n") == 1
    assert str(d) in err and expected in err
