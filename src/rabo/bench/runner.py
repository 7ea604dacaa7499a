"""`rabo bench` (issue 9): in one process, the machine's matmul roofline, rabo's simulator and
the naive reference loop on the same problem, seed and rounds; seconds per round of both, the
simulator's counted FLOP/s against the roofline, peak resident memory, and whether both end
with the same parameters (so the speed is not bought with different math)."""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..accounting import FlopCache
from ..config import PAPER_CAPACITIES, RunConfig, check_device
from ..errors import ConfigError, UnknownNameError
from ..experiment import Experiment, build
from ..problems.fewshot import EVAL_CHUNK, FewShot
from ..rounds import RunState
from ..runtime.loop import json_safe
from ..runtime.simulate import simulate_round
from ..submodel import Params
from ..tables import markdown
from .estimate import format_estimate, table2_estimate
from .fewshot_eval import loop_accuracies, loop_query_logits
from .naive import NaiveLoop
from .roofline import Roofline, matmul_flops, timed

WORKLOADS = ("fewshot", "fewshot-compile", "fewshot-eval", "losstuning", "quadratic",
             "table2-5w1s")
EVALUATIONS = ("fewshot-eval",)   # evaluation workloads: batched against a per-episode loop
ESTIMATES = ("table2-5w1s",)      # run-time estimates of a reproduction (bench/estimate.py)
QUADRATIC_CLIENTS = (100, 1000)   # the last is the headline row; both give the growth check
TOLERANCE = 1e-5                  # max |simulator − naive| over every coordinate of x and y
EVAL_EPISODES = 600               # fewshot-eval: a few-shot run's final_episodes
SAME_ACCURACY = 1e-6              # per-episode accuracies are k/Q: a flipped query is ≥ 1/Q
SPEEDUP_TARGET = 5.0              # issue 24: fewshot-eval batched ≥ 5× the per-episode loop
RSS_LIMIT = 4 * 2 ** 30           # quadratic at 1,000 clients must stay below it
MIB = 2 ** 20


@dataclass(frozen=True)
class Workload:
    """A named run to benchmark; ``config`` is a :class:`RunConfig` like ``rabo run``'s."""

    name: str
    config: RunConfig


def workloads(names: Sequence[str], seed: int = 0, data_dir: str | None = None) -> list[Workload]:
    """The bench's runs: ``fewshot`` (Conv-4, 5-way 1-shot, 10 clients of capacities
    1, ½, ¼, ⅛, 1/16; Omniglot with ``data_dir``, synthetic episodes without), ``losstuning``
    (digits, 10 clients) and ``quadratic`` at each of :data:`QUADRATIC_CLIENTS` clients; all
    with method rabo. The evaluation workloads (:data:`EVALUATIONS`) are not runs: see
    :func:`measure_eval`."""
    out = []
    for name in names:
        if name not in WORKLOADS:
            raise UnknownNameError("workload", name, WORKLOADS)
        if name in EVALUATIONS + ESTIMATES:
            continue
        if name in ("fewshot", "fewshot-compile"):
            source = {"source": "omniglot"} if data_dir else {"source": "synthetic"}
            out.append(Workload(name, RunConfig(
                problem="fewshot", method="rabo", clients=10, seed=seed, data_dir=data_dir,
                capacities=list(PAPER_CAPACITIES),
                problem_options={"ways": 5, "shots": 1, **source,
                                 **({"compile": True} if name == "fewshot-compile" else {})})))
        elif name == "losstuning":
            out.append(Workload(name, RunConfig(problem="losstuning", method="rabo", clients=10,
                                                seed=seed,
                                                problem_options={"dataset": "digits"})))
        else:
            out.extend(Workload(f"quadratic-{m}", RunConfig(problem="quadratic", method="rabo",
                                                            clients=m, seed=seed))
                       for m in QUADRATIC_CLIENTS)
    return out


# --- peak resident memory --------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS to its current RSS (Linux:
    ``5`` into /proc/self/clear_refs); False where that is not possible."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS in bytes since the last reset (VmHWM), or over the process's life where
    /proc is not readable (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the two loops ---------------------------------------------------------------------------
def _timed(step: Callable[[], Any], device: str, count: bool) -> tuple[float, Any, int]:
    """Run ``step`` once: (seconds, its result, FLOPs counted if ``count``, else 0)."""
    if not count:
        return (*timed(step, device), 0)
    with FlopCounterMode(display=False) as counter:
        took, result = timed(step, device)
    return took, result, int(counter.get_total_flops())


def _rounds(step: Callable[[int], tuple[float, int]], total: int, warmup: int,
            device: str) -> dict[str, Any]:
    """Per-round seconds and FLOPs of ``total`` rounds, the first ``warmup`` untimed, plus
    the peak RSS (and GPU memory) while they ran."""
    reset = reset_peak_rss()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, flops, warm = [], [], []
    for r in range(total):
        took, fl = step(r)
        if r >= warmup:
            seconds.append(took)
            flops.append(fl)
        else:
            warm.append(took)
    out = {"seconds": seconds, "warmup_seconds": warm, "flops_per_round_all": flops,
           "peak_rss_bytes": peak_rss(),
           "peak_rss_since_reset": reset}
    if torch.device(device).type == "cuda":
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def run_simulator(exp: Experiment, total: int, warmup: int) -> tuple[RunState, dict]:
    """rabo's simulator (:func:`rabo.runtime.simulate.simulate_round`) for ``total`` rounds,
    its clients computing on the config's device (the server state stays on the CPU, as in
    ``rabo run``); the FLOPs per round are the ones it counts itself (docs/algorithm.md §6)."""
    on = exp.config.device
    state = RunState(*exp.problem.init_params(exp.config.seed))
    cache = FlopCache()

    def step(r: int) -> tuple[float, int]:
        took, metrics, _ = _timed(lambda: simulate_round(exp, state, cache, evaluate=False), on,
                                  count=False)
        return took, int(metrics["flops"])

    return state, {**_rounds(step, total, warmup, on), "device": on}


def run_naive(exp: Experiment, total: int, warmup: int, device: str) -> tuple[NaiveLoop, dict]:
    """The naive loop for ``total`` rounds; its FLOPs are counted around its first round (the
    rounds' shapes repeat, so every round costs the same) and that count is reused."""
    loop = NaiveLoop(exp, device)
    counted: list[int] = []

    def step(r: int) -> tuple[float, int]:
        took, _, fl = _timed(loop.step, device, count=not counted)
        if not counted:
            counted.append(fl)
        return took, counted[0]

    return loop, {**_rounds(step, total, warmup, device), "device": device}


def max_diff(a: Params, b: Params) -> float:
    """max |a − b| over every coordinate of every tensor (inf if names or shapes differ)."""
    if a.keys() != b.keys():
        return math.inf
    worst = 0.0
    for n in a:
        p, q = a[n].detach().cpu().double(), b[n].detach().cpu().double()
        if p.shape != q.shape:
            return math.inf
        if p.numel():
            worst = max(worst, float((p - q).abs().max()))
    return worst


def _summary(raw: dict[str, Any], roofline: Roofline | None) -> dict[str, Any]:
    seconds = statistics.median(raw["seconds"])
    flops = statistics.median(raw["flops_per_round_all"])
    rate = flops / seconds if seconds > 0 else math.nan
    out = {"seconds_per_round": seconds, "seconds": raw["seconds"],
           "warmup_seconds": raw["warmup_seconds"], "flops_per_round": flops,
           "flops_per_s": rate,
           "roofline_fraction": rate / roofline.flops_per_s if roofline else None,
           "peak_rss_mib": raw["peak_rss_bytes"] / MIB, "device": raw["device"]}
    if "peak_gpu_bytes" in raw:
        out["peak_gpu_mib"] = raw["peak_gpu_bytes"] / MIB
    return out


def measure(workload: Workload, rounds: int = 3, warmup: int = 1, device: str = "cpu",
            roofline: Roofline | None = None) -> dict[str, Any]:
    """Simulator and naive loop on one workload, ``warmup`` + ``rounds`` rounds each from the
    same initial model; seconds per round are medians over the ``rounds`` timed ones."""
    exp = build(dataclasses.replace(workload.config, device=device))
    total = warmup + rounds
    state, sim = run_simulator(exp, total, warmup)
    gc.collect()
    loop, naive = run_naive(exp, total, warmup, device)
    diff = max(max_diff(state.x, loop.x), max_diff(state.y, loop.y))
    sim_s, naive_s = _summary(sim, roofline), _summary(naive, roofline)
    return {"workload": workload.name, "problem": exp.config.problem,
            "method": exp.config.method, "clients": exp.config.clients,
            "capacities": exp.config.capacities, "rounds": rounds, "warmup": warmup,
            "simulator": sim_s, "naive": naive_s,
            "speedup": naive_s["seconds_per_round"] / sim_s["seconds_per_round"],
            "flop_ratio": naive_s["flops_per_round"] / sim_s["flops_per_round"]
            if sim_s["flops_per_round"] else math.nan,
            "max_param_diff": diff, "same_params": diff <= TOLERANCE,
            "rss_reset": sim["peak_rss_since_reset"]}


def measure_eval(seed: int = 0, data_dir: str | None = None, repeats: int = 1,
                 device: str = "cpu", episodes: int = EVAL_EPISODES) -> dict[str, Any]:
    """``fewshot-eval``: a few-shot run's final evaluation (Conv-4 at width 64, 5-way 1-shot,
    the backbone and head of ``init_params(seed)``; Omniglot's test alphabets with
    ``data_dir``, synthetic episodes without), batched (:meth:`FewShot.episode_accuracies`)
    against the per-episode loop (:func:`loop_accuracies`) on the same ``episodes`` episodes,
    sampled beforehand; after a warm-up on two episodes, both evaluate them ``repeats`` times,
    alternating chunk by chunk (``EVAL_CHUNK`` episodes) so that a change in the machine's
    load falls on both alike; seconds are medians over the repeats. ``same_accuracy``: every
    episode's accuracy equal in both; ``max_logit_diff``: the largest query-logit difference
    over the first chunk of episodes."""
    source = {"source": "omniglot"} if data_dir else {"source": "synthetic"}
    problem = FewShot(clients=1, seed=seed, data_dir=data_dir, ways=5, shots=1, **source)
    x, y = ({n: p.to(device) for n, p in params.items()} for params in problem.init_params(seed))
    tasks = [{n: t.to(device) for n, t in task.items()}
             for task in problem.test_tasks(episodes, seed)]
    both = {"loop": functools.partial(loop_accuracies, problem, x, y),
            "batched": functools.partial(problem.episode_accuracies, x, y)}
    for evaluate in both.values():
        evaluate(tasks[:2])
    seconds: dict[str, list[float]] = {side: [] for side in both}
    accs: dict[str, Any] = {}
    for _ in range(repeats):
        parts: dict[str, list[Any]] = {side: [] for side in both}
        for start in range(0, episodes, EVAL_CHUNK):
            chunk = tasks[start:start + EVAL_CHUNK]
            for side, evaluate in both.items():
                parts[side].append(timed(functools.partial(evaluate, chunk), device))
        for side, chunks in parts.items():
            seconds[side].append(sum(took for took, _ in chunks))
            accs[side] = np.concatenate([part for _, part in chunks])
    first = tasks[:EVAL_CHUNK]
    logits = float((problem.query_logits(x, y, first) - torch.stack(
        [loop_query_logits(problem, x, y, t) for t in first])).abs().max()) if first else 0.0
    diff = float(abs(accs["loop"] - accs["batched"]).max()) if episodes else 0.0
    loop_s, batched_s = (statistics.median(seconds[side]) for side in both)
    return {"workload": "fewshot-eval", "problem": "fewshot", "episodes": episodes,
            "ways": problem.ways, "shots": int(problem.opts["shots"]),
            "source": problem.opts["source"], "repeats": repeats, "device": device,
            "loop_seconds": loop_s, "batched_seconds": batched_s, "seconds": seconds,
            "speedup": loop_s / batched_s, "accuracy": float(accs["batched"].mean()),
            "loop_accuracy": float(accs["loop"].mean()), "max_accuracy_diff": diff,
            "max_logit_diff": logits, "same_accuracy": diff <= SAME_ACCURACY}


# --- the whole bench -------------------------------------------------------------------------
def machine(device: str) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                        "cudnn": torch.backends.cudnn.allow_tf32}
    return info


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other processes' share of the cores skews timings."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def checks(rows: list[dict[str, Any]],
           evaluations: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The issues' acceptance figures: same parameters everywhere; quadratic at the largest
    client count under 4 GiB peak RSS; its seconds per round growing at most linearly in the
    clients (exponent log(s₂/s₁)/log(M₂/M₁) ≤ 1, with 10 % slack for timing noise); batched
    few-shot evaluation with the loop's accuracies, ≥ 5× faster (issue 24)."""
    out: dict[str, Any] = {"same_params": all(r["same_params"] for r in rows)}
    if evaluations:
        out["same_accuracy"] = all(r["same_accuracy"] for r in evaluations)
        out["eval_speedup"] = min(r["speedup"] for r in evaluations)
        out["eval_at_least_5x"] = out["eval_speedup"] >= SPEEDUP_TARGET
    named = {r["workload"]: r for r in rows}
    if {"fewshot", "fewshot-compile"} <= named.keys():
        out.update(compile_payoff(named["fewshot"]["simulator"],
                                  named["fewshot-compile"]["simulator"]))
    quad = sorted((r for r in rows if r["problem"] == "quadratic"), key=lambda r: r["clients"])
    if quad:
        out["quadratic_peak_rss_mib"] = quad[-1]["simulator"]["peak_rss_mib"]
        out["quadratic_rss_under_4gib"] = quad[-1]["simulator"]["peak_rss_mib"] * MIB < RSS_LIMIT
    if len(quad) >= 2:
        lo, hi = quad[0], quad[-1]
        exponent = math.log(hi["simulator"]["seconds_per_round"]
                            / lo["simulator"]["seconds_per_round"]) \
            / math.log(hi["clients"] / lo["clients"])
        out["quadratic_growth_exponent"] = exponent
        out["quadratic_at_most_linear"] = exponent <= 1.1
    return out


def compile_payoff(eager: dict[str, Any], compiled: dict[str, Any]) -> dict[str, Any]:
    """``problem.compile``'s figures from the simulator rows of ``fewshot`` and
    ``fewshot-compile``: the speed-up a round, the compile time (the compiled run's first
    round over its median, less the eager run's: both count FLOPs in their first round) and
    the rounds after which it pays off (inf where compiled rounds are not faster); nan without a
    warm-up round."""
    if not eager["warmup_seconds"] or not compiled["warmup_seconds"]:
        return {"compile_speedup": math.nan, "compile_seconds": math.nan,
                "compile_payoff_rounds": math.nan}
    extra = [r["warmup_seconds"][0] - r["seconds_per_round"] for r in (eager, compiled)]
    gain = eager["seconds_per_round"] - compiled["seconds_per_round"]
    cost = extra[1] - extra[0]
    return {"compile_speedup": eager["seconds_per_round"] / compiled["seconds_per_round"],
            "compile_seconds": cost, "compile_payoff_rounds": cost / gain if gain > 0 else math.inf}


@contextmanager
def _float32(threads: int | None) -> Iterator[None]:
    """``threads`` torch CPU threads, and true float32 on CUDA (no TF32 in matmuls or cuDNN
    convolutions: the roofline is float32, and TF32's 10-bit mantissa would put simulator and
    naive loop apart by ~1e-3); the previous settings come back afterwards."""
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def bench(names: Sequence[str], rounds: int = 3, warmup: int = 1, device: str = "cpu",
          threads: int | None = None, seed: int = 0, data_dir: str | None = None,
          roofline_sizes: Sequence[int] | None = None,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Roofline, then every workload; the report :func:`format_table` prints and the CLI writes
    as JSON."""
    check_options(names, rounds, warmup, device, threads)
    start, load_start = time.perf_counter(), _load()
    say = progress or (lambda _: None)
    with _float32(threads):
        say(f"roofline: dense float32 matmul on {device}")
        roof = matmul_flops(device, roofline_sizes)
        rows = []
        for workload in workloads(names, seed, data_dir):
            say(f"{workload.name}: simulator and naive loop, {warmup} + {rounds} rounds each")
            rows.append(measure(workload, rounds, warmup, device, roof))
        evaluations = []
        for name in (n for n in names if n in EVALUATIONS):
            say(f"{name}: batched evaluation and per-episode loop, {EVAL_EPISODES} episodes, "
                f"{rounds} times each")
            evaluations.append(measure_eval(seed, data_dir, rounds, device, EVAL_EPISODES))
        estimates = [table2_estimate(seed, data_dir, rounds, warmup, device, say)
                     for name in names if name in ESTIMATES]
        info = {**machine(device), "load_average_start": load_start,
                "load_average_end": _load()}
    return {"machine": info,
            "roofline": {"flops_per_s": roof.flops_per_s, "device": roof.device,
                         "by_size": {str(n): r for n, r in roof.by_size.items()}},
            "settings": {"workloads": list(names), "rounds": rounds, "warmup": warmup,
                         "device": device, "threads": torch.get_num_threads(), "seed": seed,
                         "data_dir": data_dir, "tolerance": TOLERANCE},
            "workloads": rows, "evaluations": evaluations, "estimates": estimates,
            "checks": checks(rows, evaluations),
            "wall_seconds": time.perf_counter() - start}


def check_options(names: Sequence[str], rounds: int, warmup: int, device: str,
                  threads: int | None) -> None:
    """One-line errors for values the bench cannot run with."""
    if not names:
        raise ConfigError(f"no workload given; allowed: {', '.join(WORKLOADS)}")
    for name in names:
        if name not in WORKLOADS:
            raise UnknownNameError("workload", name, WORKLOADS)
    if rounds < 1:
        raise ConfigError(f"rounds={rounds!r} is not allowed; rounds must be an integer ≥ 1")
    if warmup < 0:
        raise ConfigError(f"warmup={warmup!r} is not allowed; warmup must be an integer ≥ 0")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads!r} is not allowed; threads must be an integer ≥ 1")
    check_device(device)


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one row per workload or evaluation, and its checks."""
    roof, machine = report["roofline"], report["machine"]
    lines = [(f"roofline: {roof['flops_per_s'] / 1e9:.1f} GFLOP/s dense float32 matmul on "
              f"{roof['device']} ({machine['cpu']}, {machine['torch_threads']} threads)")]
    if machine.get("load_average_start") and machine.get("load_average_end"):
        lines.append(f"load average {machine['load_average_start'][0]:.2f} at the start, "
                     f"{machine['load_average_end'][0]:.2f} at the end, on "
                     f"{machine['cpu_count']} cores")
    if report["workloads"]:
        lines += ["", *markdown(WORKLOAD_COLUMNS, map(_workload_row, report["workloads"]))]
    if report.get("evaluations"):
        lines += ["", *markdown(EVALUATION_COLUMNS,
                                map(_evaluation_row, report["evaluations"]))]
    for estimate in report.get("estimates", []):
        lines += format_estimate(estimate)
    return "\n".join([*lines, "", *_check_lines(report)])


WORKLOAD_COLUMNS = ("workload", "clients", "sim s/round", "naive s/round", "speed-up",
                    "naive / sim FLOPs", "sim GFLOP/s", "% of roofline", "naive GFLOP/s",
                    "peak RSS MiB sim / naive", "max diff", "same params")
EVALUATION_COLUMNS = ("evaluation", "episodes", "loop s", "batched s", "speed-up", "accuracy",
                      "max accuracy diff", "max logit diff", "same accuracy")


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _workload_row(r: dict[str, Any]) -> list[str]:
    """The cells of one workload's row of :data:`WORKLOAD_COLUMNS`."""
    sim, naive = r["simulator"], r["naive"]
    return [r["workload"], str(r["clients"]), f"{sim['seconds_per_round']:.4f}",
            f"{naive['seconds_per_round']:.4f}", f"{r['speedup']:.2f}×",
            f"{r['flop_ratio']:.3f}", f"{sim['flops_per_s'] / 1e9:.3f}",
            f"{100 * sim['roofline_fraction']:.2f} %", f"{naive['flops_per_s'] / 1e9:.3f}",
            f"{sim['peak_rss_mib']:.0f} / {naive['peak_rss_mib']:.0f}",
            f"{r['max_param_diff']:.2e}", _yes(r["same_params"])]


def _evaluation_row(r: dict[str, Any]) -> list[str]:
    """The cells of one evaluation's row of :data:`EVALUATION_COLUMNS`."""
    return [f"{r['workload']} ({r['source']})", str(r["episodes"]), f"{r['loop_seconds']:.2f}",
            f"{r['batched_seconds']:.2f}", f"{r['speedup']:.2f}×", f"{r['accuracy']:.4f}",
            f"{r['max_accuracy_diff']:.2e}", f"{r['max_logit_diff']:.2e}",
            _yes(r["same_accuracy"])]


def _check_lines(report: dict[str, Any]) -> list[str]:
    """One line per acceptance check of :func:`checks` that the report holds."""
    c, lines = report["checks"], []
    if report["workloads"]:
        lines.append("same parameters (≤ 1e-5) everywhere: " + _yes(c["same_params"]))
    if "same_accuracy" in c:
        lines.append(f"batched evaluation ≥ {SPEEDUP_TARGET:.0f}× the per-episode loop: "
                     f"{_yes(c['eval_at_least_5x'])} ({c['eval_speedup']:.2f}×), "
                     f"same accuracies: {_yes(c['same_accuracy'])}")
    if "compile_seconds" in c:
        lines.append(f"fewshot-compile: {c['compile_speedup']:.2f}× the eager simulator's "
                     f"round, {c['compile_seconds']:.0f} s of compiling, paid off after "
                     f"{c['compile_payoff_rounds']:.0f} rounds")
    if "quadratic_rss_under_4gib" in c:
        lines.append(f"quadratic peak RSS {c['quadratic_peak_rss_mib']:.0f} MiB < 4 GiB: "
                     + _yes(c["quadratic_rss_under_4gib"]))
    if "quadratic_growth_exponent" in c:
        lines.append(f"quadratic s/round ∝ clients^{c['quadratic_growth_exponent']:.2f} "
                     f"(at most linear: {_yes(c['quadratic_at_most_linear'])})")
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    """The report as JSON; non-finite floats become null."""
    path.write_text(json.dumps(json_safe(report), indent=2) + "\n")
