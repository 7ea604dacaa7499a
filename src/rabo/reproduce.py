"""Reproductions of the paper's experiments: each runs a grid of (setting, method) configs with
the simulator into one output directory and writes a results table (Markdown, CSV) and plots.

``fig6`` (paper V-B): loss tuning with the VS loss on long-tailed data, every pruned method at
half width (the paper's capacity setting), FedMBO (tuned, full model) and FedAvg (untuned, full
model) as dashed reference lines; final balanced test accuracy and cost relative to FedMBO.
``--quick`` runs the same pipeline at a size that finishes in minutes.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

from .config import RunConfig
from .experiment import build
from .report import load_runs, plot, summarize
from .runtime.simulate import run

FIG6_METHODS = ("fedmbo", "fedavg", "rabo", "rafbo", "static", "fedrolex", "fiarse", "oap")
REFERENCES = frozenset({"fedmbo", "fedavg"})


def run_grid(configs: dict[str, RunConfig], out: Path, progress: bool = True) -> list[Path]:
    """Run every config into ``out/<name>`` (a finished run directory is reused, so an
    interrupted reproduction continues where it stopped); returns the run directories."""
    paths = []
    for name, config in configs.items():
        path = out / name
        if not (path / "final.safetensors").exists():
            run(build(config), path, progress=progress)
        paths.append(path)
    return paths


def cost_table(paths: list[Path], reference: str = "fedmbo") -> list[dict[str, Any]]:
    """Final and best accuracy, and total FLOPs and bytes relative to ``reference``'s run."""
    rows = [summarize(r) for r in load_runs(paths)]
    base = next(r for r in rows if r["method"] == reference)
    for r in rows:
        r["flops_ratio"] = r["gflops"] / base["gflops"] if base["gflops"] else None
        r["bytes_ratio"] = r["mb"] / base["mb"] if base["mb"] else None
    return rows


def write_table(rows: list[dict[str, Any]], columns: list[str], out: Path, stem: str) -> list[Path]:
    """``stem``.csv (full precision) and ``stem``.md (4 significant figures)."""
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return [out / f"{stem}.csv", out / f"{stem}.md"]


def fig6(out: Path, data_dir: str | None, dataset: str = "fashion-mnist", quick: bool = False,
         seed: int = 0, progress: bool = True) -> list[Path]:
    """Fig. 6: balanced test accuracy against rounds for every method on long-tailed data."""
    base = RunConfig(problem="losstuning", clients=10, capacities=[0.5], seed=seed,
                     data_dir=data_dir, problem_options={"dataset": dataset})
    if quick:
        base = dataclasses.replace(base, rounds=3, eval_every=1)
    configs = {m: dataclasses.replace(base, method=m) for m in FIG6_METHODS}
    out.mkdir(parents=True, exist_ok=True)
    paths = run_grid(configs, out, progress)
    runs = load_runs(paths)
    files = [out / "fig6_accuracy.png"]
    plot(runs, [("accuracy", "balanced test accuracy", False)], "rounds", files[0],
         dashed=REFERENCES)
    columns = ["method", "rounds", "final_accuracy", "best_accuracy", "flops_ratio",
               "bytes_ratio", "gflops", "mb", "wall_seconds"]
    return files + write_table(cost_table(paths), columns, out, "fig6")


EXPERIMENTS = {"fig6": fig6}
