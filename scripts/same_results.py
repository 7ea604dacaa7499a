"""Fingerprint fixed-seed runs of every built-in problem × method, to show a refactor changes
no result: ``python scripts/same_results.py record FILE`` before, ``… check FILE`` after.

Each run is a few rounds of ``rabo run`` at one thread; its fingerprint is the SHA-256 of
metrics.jsonl with the wall-clock fields removed, and of every tensor of final.safetensors
(name, dtype, shape, bytes). Bit-identical on one machine and torch build; a different CPU may
round differently, so record and check on the same machine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from rabo.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CLOCK = ("seconds", "time", "wall")
PROBLEMS = {
    "quadratic": ["--rounds", "3", "--clients", "5", "--set", "problem.dim=20"],
    "losstuning": ["--rounds", "2", "--clients", "5"],
    "fewshot": ["--rounds", "2", "--clients", "5", "--data-dir", str(DATA / "omniglot"),
                "--set", "problem.tasks=1", "--set", "problem.eval_episodes=4",
                "--set", "problem.final_episodes=6", "--set", "eval_every=1"],
}
EXAMPLE = str(ROOT / "examples" / "residual_digits.py") + ":ResidualDigits"


def _runs() -> list[tuple[str, str, list[str]]]:
    runs = []
    for problem, args in PROBLEMS.items():
        for name, method in METHODS.items():
            if method.problems and problem not in method.problems:
                continue
            runs.append((problem, name, args))
    for name in ("rabo", "rafbo", "fedmbo"):
        runs.append((EXAMPLE, name, ["--rounds", "2", "--clients", "5"]))
    return runs


def _metrics_digest(path: Path) -> str:
    h = hashlib.sha256()
    for line in path.read_text().splitlines():
        row = {k: v for k, v in json.loads(line).items() if not any(c in k for c in CLOCK)}
        h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def _params_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprints() -> dict[str, dict[str, str]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for problem, method, args in _runs():
            run = Path(tmp) / f"{Path(problem).stem}-{method}"
            cmd = [sys.executable, "-m", "rabo", "run", problem, "--method", method,
                   "--threads", "1", "--quiet", "--out", str(run), *args]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            key = f"{Path(problem.split(':')[0]).stem}/{method}"
            if done.returncode != 0:
                out[key] = {"error": done.stderr.strip().splitlines()[-1:]}
            else:
                out[key] = {"metrics": _metrics_digest(run / "metrics.jsonl"),
                            "params": _params_digest(run / "final.safetensors")}
            print(key, "error" if done.returncode else "ok", flush=True)
    return out


def main() -> int:
    mode, file = sys.argv[1], Path(sys.argv[2])
    now = fingerprints()
    if mode == "record":
        file.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        return 0
    before = json.loads(file.read_text())
    bad = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    for k in bad:
        print("DIFFERS:", k, before.get(k), now.get(k))
    print(f"{len(now) - len(bad)} of {len(now)} runs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
