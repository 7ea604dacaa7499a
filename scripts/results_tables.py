"""Rebuild the tables the README cites from the runs committed under ``results/``, training
nothing: ``python scripts/results_tables.py`` (from the repository root, as the runs' config.json
record the data directories relative to it).

Each reproduction whose directory exists (``results/table2``, ``table3``, ``fig4``, ``fig6``,
``resnet12``) is tabulated with ``rabo reproduce EXPERIMENT --tables-only`` at the seeds and
settings the evidence aims for (a cell's ``seeds`` column says how many have finished); its
summary, ordering and Markdown tables are copied to ``results/`` (``results/table2.csv``,
``table2.md``, ``table2_ordering.csv``, …, ``resnet12.csv`` from ``resnet12/table2.csv``);
``results/claims.md`` sets each of the paper's claims beside what the runs show, and the
README's block between the ``results`` markers is replaced by both.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rabo.errors import GridError
from rabo.reproduce import COVER_OVER_PAPER, EXPERIMENTS, SINGLE_LEVEL
from rabo.tables import markdown, read_csv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DATA = "../shared/data"
# what each reproduction aims for (data directory as the committed runs recorded it)
PLAN: dict[str, dict[str, Any]] = {
    "table2": {"data_dir": f"{DATA}/omniglot", "seeds": 3,
               "settings": ["5w1s", "5w5s", "20w1s", "20w5s"]},
    "table3": {"data_dir": f"{DATA}/omniglot", "seeds": 1},
    "fig4": {"data_dir": f"{DATA}/omniglot", "seeds": 3},
    "fig6": {"data_dir": f"{DATA}/fashion-mnist", "seeds": 3, "dataset": "fashion-mnist"},
    # Table II's 5w1s at the paper's backbone (RABO and FedMBO): rabo reproduce table2 --set …
    "resnet12": {"experiment": "table2", "data_dir": f"{DATA}/omniglot", "seeds": 1,
                 "settings": ["5w1s"],
                 "sets": {"problem.backbone": "resnet12"}},
}
FULL_MODEL = ("fedmbo", "protonet", "maml")    # "the three full model training methods"
# the paper's Table III (accuracy in %; ResNet-12, full Omniglot) in table3.md's layout
PAPER_TABLE3 = [["5w1s rabo", "76.05", "75.81", "74.39", "72.76"],
                ["5w1s rafbo", "75.09", "74.85", "73.04", "71.80"],
                ["5w5s rabo", "89.12", "88.52", "87.76", "86.58"],
                ["5w5s rafbo", "88.57", "87.53", "87.03", "86.44"]]
CAPTIONS = {"resnet12": (", Table II's 5w1s with the paper's ResNet-12 backbone instead of "
                         "Conv-4 (`--set problem.backbone=resnet12`), its features at Conv-4's "
                         "norm (feature_rms 0.53, its default for 512 features; docs/tuning.md)")}
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
VERDICTS = ("holds", "tie", "fails", "holds?", "fails?")


def tabulate(name: str, out: Path) -> list[Path]:
    """Write ``name``'s tables from the runs in ``out`` (training nothing); its summary,
    ordering and Markdown tables (what ``results/`` keeps at its top, as :func:`top`)."""
    plan = {k: v for k, v in PLAN[name].items() if k != "experiment"}
    EXPERIMENTS[experiment(name)](out, plan.pop("data_dir"), plan.pop("dataset", None),
                                  progress=False, train=False, **plan)
    return [t for t in sorted(out.glob(f"{experiment(name)}*"))
            if t.suffix in (".csv", ".md") and not t.stem.endswith("_runs")]


def experiment(name: str) -> str:
    """The reproduction ``PLAN[name]`` runs: its own ``experiment``, else its name."""
    return PLAN[name].get("experiment", name)


def top(name: str, table: Path) -> Path:
    """Where ``results/`` keeps the copy of ``name``'s ``table``: at its top, the experiment's
    name replaced by the plan's (results/resnet12/table2.md → results/resnet12.md)."""
    return RESULTS / (name + table.name.removeprefix(experiment(name)))


def _orderings(name: str) -> list[dict[str, str]]:
    return _summary(f"{name}_ordering")


def _summary(stem: str) -> list[dict[str, str]]:
    """The rows of ``results/<stem>.csv`` (none where it is not yet written)."""
    path = RESULTS / f"{stem}.csv"
    return read_csv(path) if path.exists() else []


def _compared(rows: list[dict[str, str]], methods: tuple[str, ...],
              against: tuple[str, ...]) -> list[dict[str, str]]:
    """The ordering rows of each of ``methods`` against each of ``against`` that have a
    difference."""
    pairs = {f"{m} − {b}" for m in methods for b in against}
    return [r for r in rows if r["comparison"] in pairs and r["difference"]]


def _margin(rows: list[dict[str, str]], method: str) -> str:
    """``method``'s mean and median margin over the single-level baselines, in points, over
    every setting with a difference (the median, as one outlying baseline run can carry the
    mean)."""
    diffs = [float(r["difference"]) for r in _compared(rows, (method,), SINGLE_LEVEL)]
    if not diffs:
        return "not run yet"
    return (f"{np.mean(diffs):+.2f} points mean, {np.median(diffs):+.2f} median "
            f"({len(diffs)} comparisons)")


def _tally(rows: list[dict[str, str]], methods: tuple[str, ...],
           against: tuple[str, ...]) -> str:
    """How many of the comparisons of ``methods`` with each of ``against`` got each verdict,
    per setting (settings can differ in what their intervals are over: seeds or episodes)."""
    return _verdicts(_compared(rows, methods, against))


def _verdicts(rows: list[dict[str, str]]) -> str:
    """How many of the ordering ``rows`` got each verdict, per setting."""
    parts = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        verdicts = [r["verdict"] for r in rows if r["setting"] == setting]
        parts.append(f"{setting}: " + ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS
                                                if v in verdicts))
    return "; ".join(parts) or "not run yet"


def _against_best(rows: list[dict[str, str]], summary: list[dict[str, str]],
                  methods: tuple[str, ...]) -> str:
    """Each of ``methods`` against the single-level baseline with the highest mean accuracy in
    each setting of ``summary`` (table2.csv's rows), from the ordering ``rows``: difference in
    points ± 95 % and verdict."""
    baselines = [r for r in summary if r["method"] in SINGLE_LEVEL and r["mean"]]
    parts = []
    for setting in dict.fromkeys(r["setting"] for r in baselines):
        best = max((r for r in baselines if r["setting"] == setting),
                   key=lambda r: float(r["mean"]))["method"]
        parts += [_stated(r) for r in _compared(rows, methods, (best,))
                  if r["setting"] == setting]
    return ", ".join(parts) or "not run yet"


def _stated(row: dict[str, str]) -> str:
    """An ordering row in words: setting, comparison, difference in points ± 95 %, verdict."""
    ci = f" ± {float(row['ci95']):.2f}" if row["ci95"] else ""
    return f"{row['setting']} {row['comparison']}: {_num(row['difference'])}{ci} {row['verdict']}"


def _cover_over_paper(rows: list[dict[str, str]]) -> str:
    """The ordering ``rows`` that set a cover variant against the paper's method (Table II:
    ``rabo-cov − rabo``; Table III: ``rabo-cov-M20 − rabo-M20``), in words."""
    return ", ".join(_stated(r) for r in rows
                     if r["difference"] and _methods(r) in COVER_OVER_PAPER) or "not run yet"


def _methods(row: dict[str, str]) -> tuple[str, str]:
    """The methods an ordering row compares."""
    a, b = row["comparison"].split(" − ")
    return _method(a), _method(b)


def _method(run: str) -> str:
    """The method of a run (Table III's ``rabo-M20`` → ``rabo``; Table II's are methods)."""
    return run.rsplit("-M", 1)[0]


def _cost(method: str) -> str:
    """``method``'s computation and communication relative to FedMBO per Table II setting (the
    same runs as Fig. 4's cost bars), and on the paper's ResNet-12 (``results/resnet12/``,
    one round counted by ``rabo cost``)."""
    rows = [(f"Conv-4 {r['setting']}", r) for r in _summary("table2")
            if r["method"] == method and r["flops_ratio"]]
    resnet = RESULTS / "resnet12" / "cost.json"
    if resnet.exists():
        rows += [("ResNet-12 5w1s", r) for r in json.loads(resnet.read_text())
                 if r["method"] == method]
    return "; ".join(f"{name}: {100 * float(r['flops_ratio']):.1f} % computation, "
                     f"−{100 * (1 - float(r['bytes_ratio'])):.1f} % communication"
                     for name, r in rows) or "not run yet"


def _table3(methods: tuple[str, ...]) -> str:
    """Each of ``methods``' accuracy per number of clients finished, per setting, and the
    verdicts of "fewer clients ≥ the next more" for them."""
    rows = _summary("table3")
    fewer_first = [r for r in _orderings("table3") if r["difference"]
                   and _methods(r) in {(m, m) for m in methods}]
    parts = [f"fewer ≥ more clients, {_verdicts(fewer_first)}"] if fewer_first else []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for m in methods:
            accs = [f"{r['run'].rsplit('-M', 1)[1]} clients {100 * float(r['mean']):.1f}"
                    for r in rows if r["setting"] == setting and _method(r["run"]) == m]
            if accs:
                parts.append(f"{m} {setting}: " + " → ".join(accs))
    return "; ".join(parts) or "not run yet"


def claims() -> list[list[str]]:
    """The paper's claims (its text; its tables' numbers did not survive) beside ours."""
    t2, f4, f6 = _orderings("table2"), _orderings("fig4"), _orderings("fig6")
    return [
        ["Table II: RABO above every single-level baseline (all but the full-model methods)",
         "all settings", _tally(t2, ("rabo",), SINGLE_LEVEL)],
        ["Table II: RAFBO above every single-level baseline", "all settings",
         _tally(t2, ("rafbo",), SINGLE_LEVEL)],
        ["Table II: the full-model FedMBO, ProtoNet and MAML above RABO", "all settings",
         _tally(t2, FULL_MODEL, ("rabo",))],
        ["Table II: RABO's mean improvement over the baselines", "+9.43 %",
         _margin(t2, "rabo")],
        ["Table II: RAFBO's mean improvement over the baselines", "+6.59 %",
         _margin(t2, "rafbo")],
        ["Table II (ours): rabo-cov above every single-level baseline", "—",
         _tally(t2, ("rabo-cov",), SINGLE_LEVEL)],
        ["Table II (ours): rafbo-cov above every single-level baseline", "—",
         _tally(t2, ("rafbo-cov",), SINGLE_LEVEL)],
        ["Table II (ours): rabo-cov, rafbo-cov against the best single-level baseline", "—",
         _against_best(t2, _summary("table2"), ("rabo-cov", "rafbo-cov"))],
        ["Table II (ours): rabo-cov above rabo, rafbo-cov above rafbo", "—",
         _cover_over_paper(t2)],
        ["Fig. 4a: RABO's cost relative to FedMBO (Table II's runs; ResNet-12: one round)",
         "26.7 % computation, −73.3 % communication",
         _cost("rabo")],
        ["Fig. 4a: RAFBO's cost relative to FedMBO (Table II's runs; ResNet-12: one round)",
         "17.8 % computation, −73.3 % communication",
         _cost("rafbo")],
        ["Fig. 4b: C_x = 5 above C_x = 1 (RABO, RAFBO; 5w5s)", "both",
         ", ".join(f"{r['comparison']}: {r['verdict']}" for r in f4) or "not run yet"],
        ["Table III: accuracy falls as clients grow (10, 20, 30, 50)", "yes",
         _table3(("rabo", "rafbo"))],
        ["Table III (ours): rabo-cov, rafbo-cov as clients grow", "—",
         _table3(("rabo-cov", "rafbo-cov"))],
        ["Table III (ours): rabo-cov above rabo, rafbo-cov above rafbo at the same clients",
         "—", _cover_over_paper(_orderings("table3"))],
        ["Fig. 6: RABO's mean improvement over the baselines", "+9.97 %", _margin(f6, "rabo")],
        ["Fig. 6: RAFBO's mean improvement over the baselines", "+5.53 %",
         _margin(f6, "rafbo")],
    ]


def block() -> str:
    """The README's results section, from the tables in ``results/``."""
    lines = [BEGIN, "", ("Generated by `python scripts/results_tables.py` from the runs in "
                         "`results/` (do not edit by hand). Accuracy in %, mean ± 95 % interval: "
                         "over the seeds where a cell has several (t-interval), else over the "
                         "run's test episodes. An ordering row compares the seeds both runs "
                         "finished, its interval over those seeds or, at one seed, over the "
                         "paired test episodes (which does not see training noise); its verdict "
                         "is `holds` outside the interval, `tie` inside it, `fails` below it, "
                         "`holds?`/`fails?` by the sign where there is no interval. The "
                         "single-level baselines are the pruned static, OAP, FedRolex and "
                         "FIARSE; FedMBO, ProtoNet and MAML train the full model. The paper "
                         "does not say whether its mean improvements are relative (%) or in "
                         "points; ours are in points."),
             "", *markdown(["the paper says", "paper", "these runs"], claims()), ""]
    for name in PLAN:
        path = RESULTS / f"{name}.md"
        if path.exists():
            lines += [f"`results/{name}.md`" + _seeds(name) + CAPTIONS.get(name, "") + ":", "",
                      *path.read_text().splitlines(), ""]
        if path.exists() and name == "table3":
            lines += [("The paper's Table III, for comparison (ResNet-12 on the full Omniglot; "
                       "ours: Conv-4 on the offline subset):"), "",
                      *markdown(["run", "10 clients", "20 clients", "30 clients", "50 clients"],
                                PAPER_TABLE3), ""]
        rows = [r for r in _orderings(name) if r["difference"]]
        if rows:
            lines += [f"`results/{name}_ordering.csv`, expected first ≥ second:", "",
                      *markdown(["setting", "comparison", "difference (points)", "95 %",
                                 "over", "verdict"],
                                [[r["setting"], r["comparison"], _num(r["difference"]),
                                  f"±{float(r['ci95']):.2f}" if r["ci95"] else "—",
                                  r["pairing"] or "—", r["verdict"]]
                                 for r in rows]), ""]
    return "\n".join(lines + [END])


def _num(text: str) -> str:
    return f"{float(text):+.2f}" if text else "—"


def _seeds(name: str) -> str:
    rows = read_csv(RESULTS / f"{name}.csv")
    counts = sorted({int(r["seeds"]) for r in rows})
    return f" (seeds per cell: {', '.join(map(str, counts))})" if counts else ""


def main() -> int:
    torch.set_num_threads(1)          # each run's config check is a small forward pass
    for name in PLAN:
        if (RESULTS / name).is_dir():
            print(f"{name}: tabulating results/{name}", file=sys.stderr, flush=True)
            try:
                tables = [Path(shutil.copyfile(t, top(name, t)))
                          for t in tabulate(name, RESULTS / name)]
            except GridError as err:           # a reproduction started, no run finished yet
                print(f"{name}: {err}")
                continue
            print(f"{name}: " + ", ".join(t.name for t in tables))
    (RESULTS / "claims.md").write_text("\n".join(
        markdown(["the paper says", "paper", "these runs"], claims())) + "\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} … {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + block() + rest.split(END, 1)[1])
    print("results/claims.md and README.md's results block rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
