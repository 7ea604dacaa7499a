"""The ``rabo`` command: ``rabo run`` runs a problem with a method in the in-process simulator."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from . import checkpoint, rundir
from .config import (
    FIELD_TYPES,
    OPTION_TABLES,
    PHASE_TIMEOUT_MAX,
    ConfigFile,
    RunConfig,
    check_seconds,
    differing_keys,
    flatten,
    overlay,
    packaged_config,
    parse_sets,
    parse_value,
    read_config,
)
from .errors import ConfigError, DataError, RaboError, UnknownNameError
from .experiment import Experiment, build
from .methods import METHODS, get_method
from .metrics import headline
from .problems import PROBLEMS, get_problem


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _config_options(p: argparse.ArgumentParser) -> None:
    """The options that build a run's config, shared by ``rabo run`` and ``rabo cost``."""
    p.add_argument("problem", nargs="?", default=None,
                   help=f"problem to solve: {', '.join(PROBLEMS)} (default: losstuning on "
                        f"scikit-learn digits), or a rabo.BilevelProblem subclass of yours: "
                        f"FILE.py:Class or package.module:Class")
    p.add_argument("--clients", type=str, help="number of clients M (default: 10)")
    p.add_argument("--capacities", type=str,
                   help="comma-separated width ratios in (0, 1]: one per client, or fewer spread "
                        "in equal blocks over the clients (default: 1,0.5,0.25,0.125,0.0625)")
    p.add_argument("--capacity-mode", choices=["fixed", "sampled"], default=None,
                   help="fixed: capacities per client; sampled: each client draws one from the "
                        "list every round (seeded)")
    p.add_argument("--capacity-trace", metavar="CSV",
                   help="per-round capacities from a CSV 'round,client,capacity' (rounds 1..T)")
    p.add_argument("--seed", type=str, help="random seed (default: 0)")
    p.add_argument("--data-dir", help="directory holding the problem's data set files")
    p.add_argument("--config", help="TOML file of config keys, with [problem_options] and "
                                    "[policy_options] tables (default: the problem's packaged "
                                    "settings: fewshot's rabo/configs/fewshot.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set inner_lr=0.05 --set problem.rho=100 "
                        "--set policy.rotate=false; repeatable")
    p.add_argument("--threads", type=str,
                   help="torch CPU threads (default: torch's choice; 1 is fastest for the small "
                        "built-in problems on a busy machine)")
    p.add_argument("--device", help="where clients compute: cpu (default), cuda or cuda:N")


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a federated bilevel problem in the in-process simulator",
        description="Run PROBLEM with a method for T rounds over M simulated clients and write "
                    "config.json, metrics.jsonl and final.safetensors into the run directory. "
                    "Precedence: built-in defaults < --config file < flags < --set.")
    _run_options(p)


def _run_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``p`` with the options of ``rabo run``, which ``rabo flower local`` and ``simulate`` take
    too."""
    _config_options(p)
    p.add_argument("--method", help=f"method preset: {', '.join(METHODS)} (default: rabo)")
    p.add_argument("--rounds", type=str, help="global iterations T (default: the problem's)")
    p.add_argument("--out", type=Path,
                   help="run directory (default: runs/PROBLEM-METHOD-seedS)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory instead of refusing")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last checkpoint (same config)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=str,
                   help="write a checkpoint every N rounds (default: every evaluation round) "
                        "and at the end")
    p.add_argument("--participation", type=str,
                   help="fraction p in (0, 1] of clients sampled each round (default: 1)")
    p.add_argument("--fail-prob", dest="fail_prob", type=str,
                   help="probability q in [0, 1) that a sampled client fails in a round "
                        "(simulated faults; default: 0)")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress output (a bar on a terminal, plain lines otherwise)")
    return p


def _cost_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost", help="FLOPs and bytes per client per round of every method, relative to fedmbo",
        description="Count, for each method, the FLOPs a client spends per round (inner phase, "
                    "outer phase) and the bytes it receives and sends, by running the methods' "
                    "first rounds with the same counting as `rabo run`; ratios are to fedmbo.")
    _config_options(p)
    p.add_argument("--methods", help="comma-separated methods to compare (default: all "
                   "that run on the problem)")
    p.add_argument("--rounds", type=int, default=1, help="rounds to average over (default: 1)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="figures and a summary table of run directories",
        description="Plot accuracy and losses against rounds, cumulative FLOPs and cumulative "
                    "bytes, and the cover numbers per round, one line per run; write "
                    "accuracy_vs_{rounds,flops,bytes}.png, loss_vs_{rounds,flops,bytes}.png, "
                    "cover.png, summary.md and summary.csv (a figure only when some run logs "
                    "its metrics).")
    p.add_argument("runs", nargs="+", type=Path, metavar="DIR",
                   help="run directories written by `rabo run`")
    p.add_argument("--out", type=Path,
                   help="directory for the figures and tables (default: DIR/report of the first)")


def _reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="reproduce one of the paper's experiments (table, CSV and plots)",
        description="Run one of the paper's experiments with the simulator into OUT: every "
                    "method's run directory, a results table (Markdown and CSV) and PNG plots. "
                    "Finished runs in OUT are reused (config.json and a complete metrics.jsonl "
                    "suffice: no model file), so a reproduction continues and accumulates.")
    p.add_argument("experiment", choices=["fig6", "table2", "table3", "fig4"],
                   help="fig6: loss tuning on long-tailed data; table2, table3, fig4: few-shot "
                        "on Omniglot (methods; number of clients; cost and cover number)")
    p.add_argument("--data-dir", help="directory holding the data set files")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fig6: fashion-mnist (default), mnist, cifar10 or digits")
    p.add_argument("--out", type=Path, help="output directory (default: runs/reproduce-NAME)")
    p.add_argument("--quick", action="store_true",
                   help="the same pipeline at a size that finishes in minutes")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="run every cell at this many consecutive seeds from --seed and "
                        "report the seeds' mean ± 95 %% t-interval (default: 1)")
    p.add_argument("--validate", action="store_true",
                   help="few-shot: evaluate on held-out training alphabets (the last fifth of "
                        "them) instead of the test alphabets; for tuning the run settings")
    p.add_argument("--settings", type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
                   help="few-shot: comma-separated settings to run, e.g. 5w1s,20w5s "
                        "(default: the experiment's)")
    p.add_argument("--methods", type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                   help="comma-separated methods whose runs to train, e.g. rabo,rafbo (default: "
                        "all of the experiment's); the others' finished runs in OUT are still "
                        "tabulated")
    p.add_argument("--config", type=Path, help="few-shot: TOML run settings (default: the "
                   "packaged rabo/configs/fewshot.toml, as `rabo run fewshot` uses)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config key on every run, over the experiment's settings, e.g. "
                        "--set problem.backbone=resnet12 --set rounds=50; repeatable. The runs' "
                        "config.json record it: a rerun or --tables-only needs the same")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; a "
                   "config file's `threads` wins); with --jobs N, shared: THREADS // N each")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in a worker process (default: 1, one after "
                        "another in this process); results equal those of --jobs 1")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: write the tables from the runs in OUT that finished "
                        "(a cell's seeds are those finished; the others are named on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rabo", description="Resource-adaptive federated bilevel optimization "
                     "(RABO / RAFBO): dual-pruned submodels, parameter-wise aggregation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _run_parser(sub)
    _cost_parser(sub)
    _reproduce_parser(sub)
    _report_parser(sub)
    _flower_parser(sub)
    _bench_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < --config (then its ``[setting.NwKs]`` table for the run's ways and shots, then
    its ``[method.NAME]`` table for the run's method) < flags < --set, every key checked.
    Without --config, the problem's packaged settings (:func:`~rabo.config.packaged_config`)
    take its place."""
    file = read_config(args.config) if args.config else ConfigFile()
    sets, flags = parse_sets(args.set), flag_values(args)
    # The problem decides which problem.* options exist, so it is settled first; then the
    # method and the setting (N-way K-shot) that pick the file's tables.
    problem = parse_value("problem", sets.get("problem", flags.get(
        "problem", file.base.get("problem", "losstuning"))), str)
    if not args.config:  # the problem's packaged run settings, those of `rabo reproduce`
        file = packaged_config(problem)
    defaults = get_problem(problem).options
    options = {k: type(v) for k, v in defaults.items()}
    method = sets.get("method", flags.get("method", file.base.get("method")))
    base, by_method, flags, sets = (flatten(values, options, problem) for values in
                                    (file.base, file.method_table(method), flags, sets))
    given = {**base, **by_method, **flags, **sets}
    ways, shots = (given.get(f"problem.{k}", defaults.get(k)) for k in ("ways", "shots"))
    if file.settings and (ways is None or shots is None):
        raise ConfigError(f"{str(args.config)!r} has [setting.NwKs] tables, for problems with "
                          f"ways and shots; {problem!r} has neither")
    setting = flatten(file.setting_table(ways, shots), options, problem)
    return overlay(RunConfig(problem=problem), {**base, **setting, **by_method, **flags, **sets})


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the command line's flags set: a flag sets the :class:`RunConfig`
    field its argparse destination is named after (``--fail-prob`` → ``fail_prob``)."""
    given = vars(args)
    return {k: given[k] for k in FIELD_TYPES if given.get(k) is not None}


def _given(args: argparse.Namespace) -> bool:
    """Whether the command line sets any config value (beyond --resume and display flags)."""
    return bool(args.set) or args.config is not None or bool(flag_values(args))


def config_from_json(values: Any, source: str) -> RunConfig:
    """The RunConfig of a run's config.json, every value of its field's type (null only where
    the field allows it): a hand-edited file is a one-line ConfigError naming the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source} holds no JSON object")
    nullable = {f.name for f in dataclasses.fields(RunConfig) if f.default is None}
    fields = {}
    for key, value in values.items():
        if key in OPTION_TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key}={value!r} is not of type dict")
            fields[key] = dict(value)
        elif key not in FIELD_TYPES:
            raise UnknownNameError(f"key of {source}:", key, FIELD_TYPES)
        elif not (value is None and key in nullable):
            fields[key] = _json_value(f"{source}: {key}", value, FIELD_TYPES[key])
    config = RunConfig(**fields)
    for key, default in get_problem(config.problem).options.items():
        if config.problem_options.get(key) is not None and default is not None:
            _json_value(f"{source}: problem.{key}", config.problem_options[key], type(default))
    return config


def _json_value(key: str, value: Any, kind: type) -> Any:
    """``value`` from JSON as ``kind``: a string only where a string belongs."""
    if value is None or (isinstance(value, str) and kind is not str):
        raise ConfigError(f"{key}={value!r} is not of type {kind.__name__}")
    return parse_value(key, value, kind)


def resumed_experiment(args: argparse.Namespace) -> tuple[Experiment, Path]:
    """The experiment of run directory ``--resume DIR``, refusing a changed config (the
    differing keys named), a config.json edited since its checkpoint, a finished run (one
    with its final.safetensors), or a checkpoint of another run."""
    out = _resume_dir(args)
    saved = _saved_config(out)
    meta = checkpoint.peek(out) if (out / checkpoint.FILE).exists() else None
    if meta is not None and meta["config"] != saved:
        _refuse_checkpoint(out, saved, meta["config"])
    exp = build(config_from_json(saved, f"config.json of {str(out)!r}"))
    if _given(args):
        wanted = build(config_from_args(args)).config.to_dict()
        differ = differing_keys(saved, wanted)
        if differ:
            raise ConfigError(f"resume of {str(out)!r} refused: the config differs in "
                              f"{', '.join(differ)}; resume without changing it")
    if meta is not None and meta["round"] >= exp.config.rounds and _finished(out):
        raise ConfigError(f"run {str(out)!r} is already finished (round {meta['round']} of "
                          f"{exp.config.rounds}); nothing to resume")
    return exp, out


def _resume_dir(args: argparse.Namespace) -> Path:
    """The directory ``--resume`` names, refused with ``--out`` elsewhere or ``--overwrite``."""
    if not args.resume:
        raise ConfigError("--resume '' names no run directory; give the directory of the run "
                          "to continue")
    out = Path(args.resume)
    if args.out is not None and args.out.resolve() != out.resolve():
        raise ConfigError(f"--out {str(args.out)!r} with --resume {str(out)!r}: a resumed run "
                          f"continues in its own directory; leave out --out")
    if args.overwrite:
        raise ConfigError("--overwrite with --resume: resuming keeps the run; leave out one")
    return out


def _saved_config(out: Path) -> Any:
    """The JSON of run directory ``out``'s config.json; a missing or corrupt one is a
    one-line DataError."""
    try:
        return json.loads((out / rundir.CONFIG).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"cannot resume {str(out)!r}: no config.json (not a run directory)") \
            from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot resume {str(out)!r}: config.json is corrupt "
                        f"({str(err).splitlines()[0][:80]})") from None


def _refuse_checkpoint(out: Path, saved: Any, theirs: dict[str, Any]) -> None:
    """Refuse a checkpoint whose config (``theirs``) is not config.json's (``saved``): one of
    another run, or a config.json edited after the checkpoint was written."""
    if not isinstance(saved, dict) or any(theirs.get(k) != saved.get(k)
                                          for k in ("problem", "method")):
        raise DataError(f"checkpoint in {str(out)!r} belongs to another run (problem "
                        f"{theirs.get('problem')!r}, method {theirs.get('method')!r}); it "
                        f"does not match config.json")
    edited = sorted(k for k in set(saved) | set(theirs) if saved.get(k) != theirs.get(k))
    raise DataError(f"config.json of {str(out)!r} was edited after its checkpoint was "
                    f"written (differs in {', '.join(edited)}); restore it or start again "
                    f"with --overwrite")


def _finished(out: Path) -> bool:
    """Whether ``out`` holds a sound final.safetensors (else resuming writes it again)."""
    try:
        checkpoint.read_tensors(out / rundir.FINAL)
    except DataError:
        return False
    return True


def _prepare_run(args: argparse.Namespace) -> tuple[Experiment, Path]:
    """The experiment and run directory of ``rabo run`` / ``rabo flower local``: the run of
    ``--resume DIR``, or a new one from the command line whose directory (``--out``, default
    runs/NAME-METHOD-seedS, NAME the problem class's ``name``) must be empty or absent,
    unless ``--overwrite`` and it is a run directory (then rabo's files in it are removed,
    :func:`rabo.rundir.clear`)."""
    if args.resume is not None:
        return resumed_experiment(args)
    exp = build(config_from_args(args))
    cfg = exp.config
    out = args.out or Path("runs") / f"{exp.problem.name}-{cfg.method}-seed{cfg.seed}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is not a directory; give a directory for the run")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"run directory {str(out)!r} already exists; pass --overwrite "
                              f"to replace it or choose another --out")
        rundir.clear(out)
    return exp, out


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.loop import run

    exp, out = _prepare_run(args)
    cfg = exp.config
    try:
        state = run(exp, out, progress=not args.no_progress, resume=args.resume is not None)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        done = checkpoint.peek(out)["round"] if (out / checkpoint.FILE).exists() else 0
        print(f"rabo: interrupted after round {done} of {cfg.rounds} by "
              f"{signal.Signals(signum).name}; continue with 'rabo run --resume {out}'",
              file=sys.stderr)
        return 128 + signum
    last = state.history[-1]
    shown = headline(last)
    print(f"{cfg.method} on {exp.problem.name}: {cfg.rounds} rounds, "
          + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + f" -> {out}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from .cost import format_table, measure

    methods = None if args.methods is None else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods or []:
        get_method(m)
    if args.rounds < 1:
        raise ConfigError(f"rounds={args.rounds!r} is not allowed; rounds must be an integer ≥ 1")
    if args.json and not args.json.resolve().parent.is_dir():   # checked before the work
        raise ConfigError(f"--json {str(args.json)!r}: its folder does not exist")
    rows = measure(config_from_args(args), methods, args.rounds)
    print(format_table(rows))
    if args.json:
        try:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        except OSError as err:
            raise DataError(f"cannot write --json {str(args.json)!r}: {err.strerror}") from None
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    written = report(args.runs, args.out)
    print(f"{len(args.runs)} run(s): {', '.join(p.name for p in written)} -> {written[0].parent}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import EXPERIMENTS, check_jobs

    check_jobs(args.jobs)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be an integer ≥ 1")
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / ("reproduce-" + args.experiment
                                      + ("-validate" if args.validate else ""))
    existed = out.exists()
    if args.tables_only and not out.is_dir():
        raise ConfigError(f"--tables-only: {str(out)!r} is not a directory of runs; nothing "
                          f"to tabulate (give the --out a reproduction ran into)")
    try:
        files = EXPERIMENTS[args.experiment](out, args.data_dir, args.dataset, quick=args.quick,
                                             seed=args.seed, progress=not args.quiet,
                                             settings=args.settings, config=args.config,
                                             validate=args.validate, seeds=args.seeds,
                                             jobs=args.jobs, train=not args.tables_only,
                                             methods=args.methods, sets=parse_sets(args.set))
    except RaboError:                   # refused: leave no empty folder behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    except KeyboardInterrupt as stop:
        print(f"rabo: interrupted; the runs in {out} are kept as far as they got: the same "
              f"command continues them (finished runs are reused)", file=sys.stderr)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    print(f"{args.experiment}: wrote " + ", ".join(f.name for f in files) + f" in {out}")
    return 0


def _flower_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flower", help="run on Flower: the same client and server steps, as "
                                      "messages between a SuperLink and SuperNodes")
    modes = p.add_subparsers(dest="flower_command", required=True, parser_class=_Parser)
    described = {
        "local": ("start a SuperLink and SuperNodes on 127.0.0.1 and run there",
                  ("Start a SuperLink and N SuperNodes on 127.0.0.1 (node k hosts clients k, "
                   "k+N, ...), run PROBLEM on them with `flwr run`, write the same run "
                   "directory as `rabo run`, and stop every process started. Takes the options "
                   "of `rabo run`.")),
        "simulate": ("run on Flower's simulation engine (Ray) on this machine",
                     ("Start a SuperLink with Flower's simulation engine, run PROBLEM on N "
                      "simulated nodes (node p, Flower's partition-id p, hosts clients p, "
                      "p+N, ...) with `flwr run`, their ClientApps in a pool of Ray actors, "
                      "write the same run directory as `rabo run`, and stop every process "
                      "started. Needs pip install 'rabo[flower]' (Flower with its simulation "
                      "extra, Ray). Takes the options of `rabo run`.")),
    }
    local, simulate = (_run_options(modes.add_parser(name, help=short, description=long))
                       for name, (short, long) in described.items())
    local.add_argument("--supernodes", type=int,
                       help="SuperNodes to start, 1 to min(clients, 256) (default: 3)")
    simulate.add_argument("--supernodes", type=int,
                          help="simulated nodes, 1 to clients (default: one per client)")
    simulate.add_argument("--cpus", type=int,
                          help="CPUs Ray may use in all (default: all of this machine's)")
    simulate.add_argument("--node-cpus", type=int, default=1,
                          help="CPUs per Ray actor: actors = cpus / node-cpus (default: 1)")
    simulate.add_argument("--node-gpus", type=float, default=0.0,
                          help="GPUs per Ray actor; a fraction shares a GPU (default: 0)")
    for mode in (local, simulate):
        mode.add_argument("--timeout", default=600.0,
                          type=lambda text: check_seconds("--timeout", text, PHASE_TIMEOUT_MAX),
                          help="seconds a phase waits for a node's reply before counting its "
                               "clients failed, at most 86400; a phase no client answers stops "
                               "the run, the rounds done checkpointed (default: 600)")


def cmd_flower(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("rabo flower needs Flower; install it with pip install 'rabo[flower]'")
    simulated = args.flower_command == "simulate"
    if simulated and importlib.util.find_spec("ray") is None:
        raise ConfigError("rabo flower simulate needs Ray; install it with pip install "
                          "'rabo[flower]' (Flower's simulation extra)")
    from .runtime.local import SimulationEngine, node_count, run_local

    engine = SimulationEngine(args.cpus, args.node_cpus, args.node_gpus) if simulated else None
    given = None if args.resume else config_from_args(args)
    if given is not None and given.clients >= 1:   # refused before --overwrite empties --out
        node_count(args.supernodes, given.clients, simulated)
    exp, out = _prepare_run(args)
    cfg = exp.config
    supernodes = node_count(args.supernodes, cfg.clients, simulated)
    run_local(exp, out, supernodes, args.timeout, resume=args.resume is not None,
              quiet=args.no_progress, engine=engine)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    shown = headline(last)
    where = f"simulation engine, {supernodes} nodes" if simulated else \
        f"{supernodes} SuperNodes"
    print(f"{cfg.method} on {exp.problem.name} (Flower, {where}): {cfg.rounds} rounds, "
          + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + f" -> {out}")
    return 0


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time the simulator against a naive FedNest-style loop and the matmul "
                      "roofline",
        description="In one process: the machine's dense float32 matmul FLOP/s (the roofline), "
                    "rabo's simulator and a naive reference loop (one client after another, a "
                    "fresh nn.Module per client, autograd double backward) on the same "
                    "problems, seeds and rounds. Prints a table and writes JSON: seconds per "
                    "round of both, their ratio, the simulator's counted FLOP/s as a fraction "
                    "of the roofline, peak RSS, and whether both end with the same parameters.")
    p.add_argument("--workloads", default="fewshot,losstuning,quadratic",
                   help="comma-separated: fewshot (Conv-4 5w1s, 10 clients), fewshot-compile "
                        "(the same with problem.compile on), fewshot-eval (600 test episodes, "
                        "batched against the per-episode loop), table2-5w1s (the run time of "
                        "table2's 5w1s column, estimated), losstuning (digits, 10 clients), "
                        "quadratic (100 and 1,000 clients) (default: fewshot,losstuning,"
                        "quadratic)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per workload, after the warm-up; fewshot-eval: timed "
                        "evaluations of each side (default: 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds first, where FLOPs are counted (default: 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="where clients compute: cpu (default), cuda "
                   "or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data-dir", help="Omniglot for fewshot (default: synthetic episodes)")
    p.add_argument("--out", type=Path, default=Path("bench.json"),
                   help="JSON file to write (default: bench.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, format_table, write_json

    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    progress = None if args.quiet else (lambda line: print(f"bench: {line}", file=sys.stderr))
    report = bench(names, args.rounds, args.warmup, args.device, args.threads, args.seed,
                   args.data_dir, progress=progress)
    print(format_table(report))
    write_json(report, args.out)
    print(f"{report['wall_seconds']:.1f} s in all -> {args.out}")
    if not report["checks"]["same_params"]:
        bad = [r["workload"] for r in report["workloads"] if not r["same_params"]]
        print(f"rabo: bench: simulator and naive loop end with different parameters on "
              f"{', '.join(bad)}", file=sys.stderr)
        return 1
    if not report["checks"].get("same_accuracy", True):
        bad = [r["workload"] for r in report["evaluations"] if not r["same_accuracy"]]
        print(f"rabo: bench: batched evaluation and per-episode loop give different accuracies "
              f"on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"run": cmd_run, "cost": cmd_cost, "reproduce": cmd_reproduce, "report": cmd_report,
            "flower": cmd_flower, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except RaboError as err:
        print(f"rabo: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:          # a full or read-only disk while writing: one line
        where = f" ({err.filename})" if err.filename else ""
        print(f"rabo: error: {err.strerror or err}{where}; what rabo wrote completely is "
              f"kept (a run continues from its last checkpoint with --resume)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rabo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
