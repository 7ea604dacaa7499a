"""``rabo reproduce``: the pipeline writes every run, a table and a plot, with sane numbers."""

import csv
import math
from pathlib import Path

import pytest

from rabo.cli import main
from rabo.reproduce import FIG6_METHODS

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def _check_fig6(out: Path, max_bytes_ratio: float) -> None:
    rows = list(csv.DictReader((out / "fig6.csv").open()))
    assert [r["method"] for r in rows] == list(FIG6_METHODS)
    for r in rows:
        assert 0.0 <= float(r["final_accuracy"]) <= 1.0
        assert math.isfinite(float(r["flops_ratio"])) and float(r["bytes_ratio"]) > 0
    by = {r["method"]: r for r in rows}
    assert float(by["fedmbo"]["flops_ratio"]) == 1.0
    # half-width submodels: the MLP's one hidden layer scales with r (0.5), the CNN's with r²
    assert float(by["rabo"]["bytes_ratio"]) <= max_bytes_ratio
    assert float(by["rafbo"]["bytes_ratio"]) <= max_bytes_ratio
    png = (out / "fig6_accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert (out / "fig6.md").read_text().count("\n") == len(FIG6_METHODS) + 2
    for m in FIG6_METHODS:
        assert (out / m / "metrics.jsonl").exists()


def test_fig6_quick_on_digits(tmp_path):
    out = tmp_path / "fig6"
    assert main(["reproduce", "fig6", "--quick", "--dataset", "digits", "--out", str(out),
                 "--quiet"]) == 0
    _check_fig6(out, max_bytes_ratio=0.51)
    # finished runs are reused: a second call rewrites the table without rerunning
    before = (out / "rabo" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["reproduce", "fig6", "--quick", "--dataset", "digits", "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "rabo" / "metrics.jsonl").stat().st_mtime_ns == before


@pytest.mark.slow
def test_fig6_quick_on_fashion_mnist(tmp_path):
    out = tmp_path / "fig6"
    assert main(["reproduce", "fig6", "--quick", "--data-dir", DATA, "--out", str(out),
                 "--quiet"]) == 0
    _check_fig6(out, max_bytes_ratio=0.27)
