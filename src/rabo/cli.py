"""The ``rabo`` command: ``rabo run`` runs a problem with a method in the in-process simulator."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .config import RunConfig, apply, load_toml, parse_sets, parse_value
from .errors import ConfigError, RaboError
from .methods import METHODS
from .problems import PROBLEMS, get_problem


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a federated bilevel problem in the in-process simulator",
        description="Run PROBLEM with a method for T rounds over M simulated clients and write "
                    "config.json, metrics.jsonl and final.safetensors into the run directory. "
                    "Precedence: built-in defaults < --config file < flags < --set.")
    p.add_argument("problem", nargs="?", default=None,
                   help=f"problem to solve: {', '.join(PROBLEMS)} (default: losstuning on "
                        f"scikit-learn digits)")
    p.add_argument("--method", help=f"method preset: {', '.join(METHODS)} (default: rabo)")
    p.add_argument("--rounds", type=str, help="global iterations T (default: the problem's)")
    p.add_argument("--clients", type=str, help="number of clients M (default: 10)")
    p.add_argument("--capacities", type=str,
                   help="comma-separated width ratios in (0, 1]: one per client, or fewer spread "
                        "in equal blocks over the clients (default: 1,0.5,0.25,0.125,0.0625)")
    p.add_argument("--capacity-mode", choices=["fixed", "sampled"], default=None,
                   help="fixed: capacities per client; sampled: each client draws one from the "
                        "list every round (seeded)")
    p.add_argument("--seed", type=str, help="random seed (default: 0)")
    p.add_argument("--out", type=Path,
                   help="run directory (default: runs/PROBLEM-METHOD-seedS)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory instead of refusing")
    p.add_argument("--data-dir", help="directory holding the problem's data set files")
    p.add_argument("--config", help="TOML file of config keys, with [problem_options] and [policy_options] tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set inner_lr=0.05 --set problem.rho=100; "
                        "repeatable")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rabo", description="Resource-adaptive federated bilevel optimization "
                     "(RABO / RAFBO): dual-pruned submodels, parameter-wise aggregation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _run_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < --config < flags < --set, with every key checked."""
    config = RunConfig()
    file_values = load_toml(args.config) if args.config else {}
    sets = parse_sets(args.set)
    flags = {k: v for k, v in {
        "problem": args.problem, "method": args.method, "rounds": args.rounds,
        "clients": args.clients, "capacities": args.capacities,
        "capacity_mode": args.capacity_mode, "seed": args.seed, "data_dir": args.data_dir,
    }.items() if v is not None}
    # The problem decides which problem.* options exist, so it is settled first.
    problem = sets.get("problem", flags.get("problem", file_values.get("problem", "losstuning")))
    config.problem = parse_value("problem", problem, str)
    options = {k: type(v) for k, v in get_problem(config.problem).options.items()}
    for values in (file_values, flags, sets):
        apply(config, values, options)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from .experiment import build
    from .runtime.simulate import run

    exp = build(config_from_args(args))
    cfg = exp.config
    out = args.out or Path("runs") / f"{cfg.problem}-{cfg.method}-seed{cfg.seed}"
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"run directory {str(out)!r} already exists; pass --overwrite to "
                              f"replace it or choose another --out")
        shutil.rmtree(out)
    state = run(exp, out, progress=not args.no_progress)
    last = state.history[-1]
    shown = {k: last[k] for k in ("inner_loss", "outer_loss", "accuracy", "hypergrad_norm")
             if last.get(k) is not None}
    print(f"{cfg.method} on {cfg.problem}: {cfg.rounds} rounds, "
          + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + f" -> {out}")
    return 0


COMMANDS = {"run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except RaboError as err:
        print(f"rabo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rabo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
