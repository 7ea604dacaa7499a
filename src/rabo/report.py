"""``rabo report``: figures and a summary table of run directories written by ``rabo run``.

Files written into the output directory (a figure is written when some run logs one of its
metrics; a panel is drawn when some run logs its metric; null values are skipped per series):

    accuracy_vs_rounds.png  accuracy_vs_flops.png  accuracy_vs_bytes.png   test accuracy
    loss_vs_rounds.png      loss_vs_flops.png      loss_vs_bytes.png       g, f, ‖∇F‖ (log)
    cover.png                                                              C_x^t, C_y^t per round
    summary.md  summary.csv                                                one row per run

FLOPs and bytes are cumulative over rounds (bytes = bytes_down + bytes_up, all clients).
Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas), never through
pyplot, so importing this module changes no global matplotlib state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .tables import write_csv, write_markdown

Panel = tuple[str, str, bool]  # (metric key, axis label, log scale)

ACCURACY: list[Panel] = [("accuracy", "test accuracy", False)]
LOSSES: list[Panel] = [("inner_loss", "inner loss g", False), ("outer_loss", "outer loss f", False),
                       ("hypergrad_norm", "‖∇F(x)‖", True)]
COVER: list[Panel] = [("cover_x", "C_x (min clients per x coordinate)", False),
                      ("cover_y", "C_y (min clients per y coordinate)", False)]
AXES = {"rounds": "round", "flops": "cumulative GFLOPs", "bytes": "cumulative MB (down + up)"}
FIGURES: dict[str, tuple[list[Panel], str]] = {
    "accuracy_vs_rounds.png": (ACCURACY, "rounds"),
    "accuracy_vs_flops.png": (ACCURACY, "flops"),
    "accuracy_vs_bytes.png": (ACCURACY, "bytes"),
    "loss_vs_rounds.png": (LOSSES, "rounds"),
    "loss_vs_flops.png": (LOSSES, "flops"),
    "loss_vs_bytes.png": (LOSSES, "bytes"),
    "cover.png": (COVER, "rounds"),
}
LABEL_KEYS = {"problem": "{}", "seed": "seed {}"}  # what tells apart runs of one method
COLUMNS = ["run", "problem", "method", "rounds", "final_accuracy", "best_accuracy",
           "final_inner_loss", "final_outer_loss", "gflops", "mb", "min_cover_x", "min_cover_y",
           "wall_seconds"]


# the metrics a report computes with: each a number or null in every row
NUMBERS = {"round", "inner_loss", "outer_loss", "accuracy", "hypergrad_norm", "cover_x",
           "cover_y", "uncovered_x", "uncovered_y", "flops", "flops_inner", "flops_outer",
           "bytes_down", "bytes_up", "seconds"}


@dataclass
class Run:
    """One run directory: its config.json, its metrics.jsonl rows and its legend label."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    label: str = ""


def _read_json(path: Path, text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} of {str(path)!r} is not valid JSON: {err.msg}") from None
    if not isinstance(value, dict):
        raise DataError(f"{where} of {str(path)!r} is not a JSON object")
    return value


def load_run(path: Path) -> Run:
    """Read a run directory; a missing, empty or malformed file is a one-line DataError."""
    if not path.is_dir():
        raise DataError(f"run directory {str(path)!r} does not exist or is not a directory")
    texts = {}
    for name in ("config.json", "metrics.jsonl"):
        try:
            texts[name] = (path / name).read_text()
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or type(err).__name__
            raise DataError(f"cannot read {str(path / name)!r}: {why}") from None
    config = _read_json(path / "config.json", texts["config.json"], "the content")
    rows = [_read_json(path / "metrics.jsonl", line, f"line {n}")
            for n, line in enumerate(texts["metrics.jsonl"].splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{str(path / 'metrics.jsonl')!r} holds no rounds")
    for n, row in enumerate(rows, 1):
        for key in NUMBERS & row.keys():
            value = row[key]
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise DataError(f"line {n} of {str(path / 'metrics.jsonl')!r}: {key}={value!r} "
                                f"is not a number")
    return Run(path, config, rows)


def load_runs(paths: list[Path]) -> list[Run]:
    """Every run, labelled by method, plus problem and seed where runs of one method differ in
    them, plus the directory name where labels would still collide."""
    runs = [load_run(Path(p)) for p in paths]
    for run in runs:
        method = run.config.get("method")
        same = [r.config for r in runs if r.config.get("method") == method]
        differ = [k for k in LABEL_KEYS if len({repr(c.get(k)) for c in same}) > 1]
        run.label = ", ".join([str(method)] + [LABEL_KEYS[k].format(run.config.get(k))
                                               for k in differ])
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label += f" ({run.path.name})"
    return runs


def series(run: Run, key: str, against: str) -> tuple[list[float], list[float]]:
    """(x, y) of metric ``key`` over rounds, cumulative GFLOPs or cumulative MB; rows where the
    metric is null or absent are skipped."""
    xs, ys, flops, nbytes = [], [], 0.0, 0.0
    for row in run.rows:
        flops += row.get("flops") or 0
        nbytes += (row.get("bytes_down") or 0) + (row.get("bytes_up") or 0)
        if row.get(key) is not None:
            xs.append({"rounds": row.get("round"), "flops": flops / 1e9, "bytes": nbytes / 1e6}
                      [against])
            ys.append(row[key])
    return xs, ys


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG whose bytes depend on the data alone: without matplotlib's
    "Software" (version) entry, so a table's rebuild over the same runs is byte-identical."""
    fig.savefig(path, dpi=100, metadata={"Software": None})


def plot(runs: list[Run], panels: list[Panel], against: str, path: Path,
         dashed: frozenset[str] = frozenset()) -> bool:
    """One panel per metric that some run logs, one line per run (methods in ``dashed`` drawn
    as dashed reference lines); False (nothing written) when no run logs any of them."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = [(p, [series(r, p[0], against) for r in runs]) for p in panels]
    drawn = [(p, lines) for p, lines in drawn if any(xs for xs, _ in lines)]
    if not drawn:
        return False
    fig = Figure(figsize=(4.8 * len(drawn), 3.6), layout="constrained")
    axes = fig.subplots(1, len(drawn), squeeze=False)[0]
    for ax, ((key, label, log), lines) in zip(axes, drawn):
        for i, (run, (xs, ys)) in enumerate(zip(runs, lines)):
            if xs:  # colour by run index, so a run keeps its colour in every figure
                ax.plot(xs, ys, color=f"C{i % 10}", label=run.label,
                        linestyle="--" if run.config.get("method") in dashed else "-",
                        marker="o" if len(xs) <= 50 else None, markersize=3, linewidth=1.2)
        ax.set(xlabel=AXES[against], ylabel=label, yscale="log" if log else "linear")
        if against == "rounds":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)
    return True


def bars(rows: list[dict[str, Any]], panels: list[tuple[str, str]], path: Path) -> None:
    """One bar panel per (key, axis label), one bar per row labelled by its ``method``
    (e.g. cost relative to FedMBO), the value printed on each bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.6 + 0.9 * len(rows) * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = [str(r.get("method")) for r in rows]
    for ax, (key, label) in zip(axes, panels):
        values = [float(r.get(key) or 0.0) for r in rows]
        drawn = ax.bar(names, values, color=[f"C{i % 10}" for i in range(len(rows))])
        ax.bar_label(drawn, fmt="%.3g", fontsize="small")
        ax.set(ylabel=label)
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def summarize(run: Run) -> dict[str, Any]:
    """One summary row (None where the run never logged the metric)."""
    def values(key: str) -> list[Any]:
        return [row[key] for row in run.rows if row.get(key) is not None]

    def total(*keys: str) -> float:
        return float(sum(row.get(k) or 0 for row in run.rows for k in keys))

    def last(key: str) -> Any:
        return (values(key) or [None])[-1]

    return {"run": run.path.name, "problem": run.config.get("problem"),
            "method": run.config.get("method"), "rounds": run.rows[-1].get("round"),
            "final_accuracy": last("accuracy"),
            "best_accuracy": max(values("accuracy"), default=None),
            "final_inner_loss": last("inner_loss"), "final_outer_loss": last("outer_loss"),
            "gflops": total("flops") / 1e9, "mb": total("bytes_down", "bytes_up") / 1e6,
            "min_cover_x": min(values("cover_x"), default=None),
            "min_cover_y": min(values("cover_y"), default=None),
            "min_channel_cover_x": min(values("channel_cover_x_min"), default=None),
            "wall_seconds": total("seconds")}


def write_summary(runs: list[Run], out: Path) -> list[Path]:
    """summary.md (numbers to 4 significant digits) and summary.csv (full precision)."""
    rows = [summarize(r) for r in runs]
    header = ["run", "problem", "method", "rounds", "final acc", "best acc", "final g",
              "final f", "GFLOPs", "MB", "min C_x", "min C_y", "wall s"]
    return [write_markdown(rows, COLUMNS, out / "summary.md", header),
            write_csv(rows, COLUMNS, out / "summary.csv")]


def report(paths: list[Path], out: Path | None = None) -> list[Path]:
    """Write the figures and the summary of the runs in ``paths`` into ``out`` (default: the
    first run's ``report/``); returns the files written."""
    runs = load_runs(paths)
    out = Path(out) if out is not None else runs[0].path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create report directory {str(out)!r}: {err.strerror}") from None
    written = [out / name for name, (panels, against) in FIGURES.items()
               if plot(runs, panels, against, out / name)]
    return written + write_summary(runs, out)
