"""Accuracy of finished runs' final models at full width and at the submodels their mask policy
gave the clients in the last rounds: does a pruned method score low because the full-width
evaluation combines channels never trained together, or because its submodels are poor?

    python scripts/window_accuracy.py results/fig6/fashion-mnist/fedrolex [--last 5]

Needs each run's ``final.safetensors`` (not committed to ``results/``) and its data. Each
round's masks are drawn as the run drew them (same seed stream), from the final model; for
policies that rank by the model's weights this differs from the masks of that round. Prints
one line per run: the full-width accuracy, then each round's distinct submodels' accuracies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rabo import rundir, server
from rabo.checkpoint import read_tensors
from rabo.cli import config_from_json
from rabo.experiment import build


def window_accuracies(run: Path, last: int) -> tuple[float, dict[int, list[float]]]:
    """(full-width accuracy, {round t: accuracy of each distinct client submodel at t})."""
    exp = build(config_from_json(json.loads((run / "config.json").read_text()), str(run)))
    cfg, problem = exp.config, exp.problem
    tensors, _ = read_tensors(run / rundir.FINAL)
    x = {k[2:]: v for k, v in tensors.items() if k.startswith("x.")}
    y = {k[2:]: v for k, v in tensors.items() if k.startswith("y.")}
    full = problem.evaluate(x, y, final=False)["accuracy"]
    rounds: dict[int, list[float]] = {}
    for t in range(cfg.rounds - last, cfg.rounds):
        capacities = exp.schedule.at(t)
        seen, accs = [], []
        for index in server.round_masks(exp.policy, problem.plan, x, y, capacities, t, cfg.seed):
            key = {g: i.tolist() for g, i in index.items()}
            if key in seen:
                continue
            seen.append(key)
            sub = problem.plan.extract({**x, **y}, index)
            accs.append(problem.evaluate({k: sub[k] for k in x}, {k: sub[k] for k in y},
                                         final=False)["accuracy"])
        rounds[t] = accs
    return full, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--last", type=int, default=5, help="how many of the last rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        full, rounds = window_accuracies(run, args.last)
        subs = "  ".join(f"t={t}: " + ",".join(f"{a:.4f}" for a in accs)
                         for t, accs in rounds.items())
        print(f"{run}  full {full:.4f}  {subs}")


if __name__ == "__main__":
    main()
