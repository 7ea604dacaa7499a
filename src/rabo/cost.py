"""Cost report (docs/algorithm.md §6): per method, FLOPs per client per round (inner and outer
phase) and bytes down and up, with ratios to FedMBO, from the very counting the runs use."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .accounting import FlopCache
from .config import RunConfig
from .experiment import build
from .methods import METHODS
from .rounds import RunState
from .runtime.simulate import simulate_round
from .tables import markdown

COLUMNS = ("flops_inner", "flops_outer", "flops", "bytes_down", "bytes_up")


def measure(config: RunConfig, methods: Sequence[str] | None = None,
            rounds: int = 1) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds of each method (default: every method defined on the problem) from
    the initial model, without evaluating (a ResNet-12's 600 final test episodes would outlast
    its round many times), and average the counted costs per client per round; ratios are to
    ``fedmbo`` (its preset, whatever policy or estimator ``config`` overrides for the others)
    on the same problem and data."""
    if methods is None:
        methods = [m.name for m in METHODS.values()
                   if not m.problems or config.problem in m.problems]
    rows = []
    for name in dict.fromkeys(["fedmbo", *methods]):
        preset = {"policy": None, "estimator": None, "policy_options": {}} \
            if name == "fedmbo" else {}
        exp = build(dataclasses.replace(config, method=name, rounds=rounds, **preset))
        state = RunState(*exp.problem.init_params(exp.config.seed))
        flops = FlopCache()
        history = [simulate_round(exp, state, flops, evaluate=False) for _ in range(rounds)]
        per = rounds * exp.config.clients
        row = {"method": name, **{c: sum(m[c] for m in history) / per for c in COLUMNS}}
        row["cover_x"] = min(m["cover_x"] for m in history)
        row["cover_y"] = min(m["cover_y"] for m in history)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["flops_ratio"] = row["flops"] / base["flops"] if base["flops"] else float("nan")
        comm, base_comm = row["bytes_down"] + row["bytes_up"], base["bytes_down"] + base["bytes_up"]
        row["bytes_ratio"] = comm / base_comm
    return [r for r in rows if r["method"] in methods]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the cost report."""
    header = ["method", "GFLOP inner", "GFLOP outer", "GFLOP total", "MB down", "MB up",
              "FLOPs / fedmbo", "bytes / fedmbo", "C_x", "C_y"]
    return "\n".join(markdown(header, (
        [r["method"], *(f"{r[c] / 1e9:.4f}" for c in ("flops_inner", "flops_outer", "flops")),
         *(f"{r[c] / 1e6:.4f}" for c in ("bytes_down", "bytes_up")),
         f"{r['flops_ratio']:.3f}", f"{r['bytes_ratio']:.3f}", str(r["cover_x"]),
         str(r["cover_y"])] for r in rows)))
