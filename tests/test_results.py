"""The committed evidence: results/'s tables are what its runs give, and the README's results
block is what scripts/results_tables.py writes from them."""

import csv
import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_tables",
                                              ROOT / "scripts" / "results_tables.py")
results_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_tables)


@pytest.mark.parametrize("difference, within, expected", [
    (2.5, False, "holds"), (0.3, True, "tie"), (-0.3, True, "tie"), (-2.5, False, "fails"),
    (0.4, None, "holds?"), (-0.4, None, "fails?")])
def test_an_ordering_in_a_word(difference, within, expected):
    from rabo.reproduce import verdict

    assert verdict(difference, within) == expected


def test_the_readme_results_block_is_generated_from_results():
    readme = (ROOT / "README.md").read_text()
    begin, end = results_tables.BEGIN, results_tables.END
    assert readme[readme.index(begin):readme.index(end) + len(end)] == results_tables.block()


@pytest.mark.parametrize("name", [n for n in results_tables.PLAN
                                  if (ROOT / "results" / f"{n}.csv").exists()])
def test_the_committed_tables_are_what_the_committed_runs_give(name, tmp_path, monkeypatch):
    """Rebuilt from a copy of the committed run directories (text only), training nothing,
    the tables are byte for byte those at the top of results/."""
    monkeypatch.chdir(ROOT)                      # the runs record data_dir relative to it
    out = tmp_path / name
    shutil.copytree(ROOT / "results" / name, out,
                    ignore=shutil.ignore_patterns("*.safetensors", "checkpoint", "*.lock",
                                                  f"{results_tables.experiment(name)}*"))
    monkeypatch.setattr("rabo.reproduce.run", _trains)
    tables = results_tables.tabulate(name, out)
    assert tables
    for table in tables:
        committed = results_tables.top(name, table)
        if table.suffix == ".csv":            # numbers to float tolerance: another CPU's numpy
            assert _cells(table) == _cells(committed), table.name
        else:
            assert table.read_text() == committed.read_text(), table.name


def _cells(path: Path) -> list[list]:
    """A CSV's cells, numbers as ``pytest.approx`` (relative 1e-12) and the rest as text."""
    def cell(text: str):
        try:
            return pytest.approx(float(text), rel=1e-12, nan_ok=True)
        except ValueError:
            return text
    return [[cell(c) for c in row] for row in csv.reader(path.open(newline=""))]


def _trains(*args, **kwargs):
    raise AssertionError("a committed run was trained")


def test_claims_count_verdicts_and_average_margins_over_the_single_level_baselines():
    from rabo.reproduce import verdict

    rows = [{"setting": s, "comparison": f"rabo − {b}", "difference": d,
             "verdict": verdict(float(d), abs(float(d)) <= 1.0)}
            for s, b, d in [("5w1s", "static", "3.0"), ("5w1s", "oap", "0.5"),
                            ("5w5s", "static", "-2.0"), ("5w5s", "fiarse", "1.5")]]
    rows.append({"setting": "5w1s", "comparison": "fedmbo − rabo", "difference": "9.0",
                 "verdict": "holds"})
    single = results_tables.SINGLE_LEVEL
    assert results_tables._tally(rows, ("rabo",), single) == ("5w1s: 1 holds, 1 tie; "
                                                           "5w5s: 1 holds, 1 fails")
    # mean (3 + .5 − 2 + 1.5)/4, median (.5 + 1.5)/2
    assert results_tables._margin(rows, "rabo") == ("+0.75 points mean, +1.00 median "
                                                    "(4 comparisons)")
    assert results_tables._tally(rows, ("rafbo",), single) == "not run yet"


def test_the_cover_variants_are_set_against_the_best_single_level_baseline_of_each_setting():
    summary = [{"setting": s, "method": m, "mean": a} for s, m, a in [
        ("5w1s", "static", "0.80"), ("5w1s", "oap", "0.81"), ("5w1s", "rabo-cov", "0.99"),
        ("5w5s", "oap", "0.92"), ("5w5s", "fiarse", "0.94"), ("5w5s", "fedrolex", "")]]
    rows = [{"setting": s, "comparison": c, "difference": d, "ci95": ci, "verdict": v}
            for s, c, d, ci, v in [
                ("5w1s", "rabo-cov − static", "3.5", "4.6", "tie"),
                ("5w1s", "rabo-cov − oap", "2.39", "2.17", "holds"),
                ("5w1s", "rafbo-cov − oap", "", "", ""),              # not run: left out
                ("5w5s", "rabo-cov − oap", "0.5", "0.3", "holds"),
                ("5w5s", "rabo-cov − fiarse", "-1.6", "", "fails?")]]
    assert results_tables._against_best(rows, summary, ("rabo-cov", "rafbo-cov")) == (
        "5w1s rabo-cov − oap: +2.39 ± 2.17 holds, 5w5s rabo-cov − fiarse: -1.60 fails?")
    assert results_tables._against_best(rows, [], ("rabo-cov",)) == "not run yet"


def test_table3_claims_keep_each_method_s_client_steps_apart_from_cover_against_paper(
        monkeypatch):
    """Table III's ordering holds both "fewer clients ≥ more" within a method and (ours) a
    cover variant against the paper's method at the same clients; each claim takes its own."""
    orderings = [{"setting": "5w5s", "comparison": c, "difference": d, "ci95": ci, "verdict": v}
                 for c, d, ci, v in [
                     ("rabo-M10 − rabo-M20", "1.01", "0.32", "holds"),
                     ("rabo-cov-M10 − rabo-cov-M20", "0.67", "0.33", "holds"),
                     ("rabo-cov-M20 − rabo-cov-M30", "-0.37", "0.35", "fails"),
                     ("rabo-cov-M10 − rabo-M10", "-0.12", "0.34", "tie"),
                     ("rabo-cov-M20 − rabo-M20", "", "", ""),          # not run: left out
                     ("rafbo-cov-M10 − rafbo-M10", "0.46", "0.31", "holds"),
                     ("rafbo-cov-M10 − rabo-M10", "0.1", "0.3", "tie")]]   # not its own
    summary = [{"setting": "5w5s", "run": r, "mean": a} for r, a in [
        ("rabo-M10", "0.925"), ("rabo-M20", "0.915"), ("rabo-cov-M10", "0.924"),
        ("rabo-cov-M20", "0.917"), ("rabo-cov-M30", "0.921")]]
    monkeypatch.setattr(results_tables, "_summary",
                        lambda stem: {"table3": summary, "table3_ordering": orderings}[stem])
    assert results_tables._table3(("rabo",)) == (
        "fewer ≥ more clients, 5w5s: 1 holds; rabo 5w5s: 10 clients 92.5 → 20 clients 91.5")
    assert results_tables._table3(("rabo-cov", "rafbo-cov")) == (
        "fewer ≥ more clients, 5w5s: 1 holds, 1 fails; "
        "rabo-cov 5w5s: 10 clients 92.4 → 20 clients 91.7 → 30 clients 92.1")
    assert results_tables._cover_over_paper(orderings) == (
        "5w5s rabo-cov-M10 − rabo-M10: -0.12 ± 0.34 tie, "
        "5w5s rafbo-cov-M10 − rafbo-M10: +0.46 ± 0.31 holds")
    assert results_tables._cover_over_paper(orderings[:3]) == "not run yet"


def test_the_resnet12_cost_report_counts_the_model_s_parameters():
    """results/resnet12/cost.json (one round of ``rabo cost``) against arithmetic: FedMBO
    sends x and y up and receives x and y, then y again for the outer phase, 4 bytes each
    (ResNet-12 backbone, 5-way linear head on its 512 features)."""
    import json

    from rabo.models import MODELS

    rows = {r["method"]: r for r in json.loads((ROOT / "results" / "resnet12" / "cost.json")
                                               .read_text())}
    backbone = MODELS["resnet12"]()
    x = sum(p.numel() for p in backbone.parameters())
    y = 5 * backbone.out_features + 5
    assert x > 7.9e6 and rows["fedmbo"]["bytes_up"] == 4 * (x + y)
    assert rows["fedmbo"]["bytes_down"] == 4 * (x + 2 * y)
    assert rows["rabo"]["flops"] == rows["rafbo"]["flops"]
    for m in ("rabo", "rafbo"):
        assert rows[m]["flops_ratio"] == pytest.approx(rows[m]["flops"] / rows["fedmbo"]["flops"])
        assert 0.25 < rows[m]["bytes_ratio"] < 0.28      # the paper: −73.3 % communication
