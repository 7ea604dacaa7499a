"""Checkpoints: the full server state as one safetensors file (tensors + JSON metadata), written
atomically (temp file + rename), never pickle. Client samplers, masks, capacities and faults are
pure functions of (seed, round, client), so x, y, the round and the global RNG states resume a
run bit-identically."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import DataError
from .submodel import Params

FILE = "checkpoint/state.safetensors"
FORMAT = "rabo-checkpoint-1"


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [random.getstate()[0], list(random.getstate()[1]), None]}


def _set_rng_states(states: dict[str, Any], torch_state: torch.Tensor) -> None:
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(torch_state)


def save(out: Path, x: Params, y: Params, round: int, config: dict[str, Any]) -> Path:
    """Write the state after ``round`` completed rounds to ``out/checkpoint/``, atomically."""
    path = out / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"x.{n}": p.contiguous() for n, p in x.items()}
    tensors |= {f"y.{n}": p.contiguous() for n, p in y.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": FORMAT, "round": str(round), "config": json.dumps(config),
            "rng": json.dumps(_rng_states())}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def peek(out: Path) -> dict[str, Any]:
    """The checkpoint's round, config and RNG states without loading tensors; a missing,
    truncated or foreign file is a one-line DataError."""
    path = out / FILE
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        return {"round": int(meta["round"]), "config": json.loads(meta["config"]),
                "rng": json.loads(meta["rng"])}
    except FileNotFoundError:
        raise DataError(f"no checkpoint in {str(out)!r}: expected {FILE}") from None
    except (SafetensorError, ValueError, KeyError, OSError, json.JSONDecodeError) as err:
        raise DataError(f"checkpoint {str(path)!r} is corrupt or not a rabo checkpoint "
                        f"({str(err).splitlines()[0][:80]})") from None


def load(out: Path, like: tuple[Params, Params]) -> tuple[Params, Params, int, dict[str, Any]]:
    """(x, y, completed rounds, config) from ``out``'s checkpoint, restoring the RNG states.
    Tensors come back in the order of ``like`` (the problem's own), so every sum over them
    rounds as in an uninterrupted run."""
    meta = peek(out)
    try:
        tensors = load_file(str(out / FILE))
    except (SafetensorError, OSError) as err:
        raise DataError(f"checkpoint {str(out / FILE)!r} is corrupt "
                        f"({str(err).splitlines()[0][:80]})") from None
    names = [f"x.{n}" for n in like[0]] + [f"y.{n}" for n in like[1]]
    if sorted(names) != sorted(n for n in tensors if n[:2] in ("x.", "y.")):
        raise DataError(f"checkpoint in {str(out)!r} holds other parameters than this problem's "
                        f"(problem {meta['config'].get('problem')!r})")
    x = {n: tensors[f"x.{n}"] for n in like[0]}
    y = {n: tensors[f"y.{n}"] for n in like[1]}
    _set_rng_states(meta["rng"], tensors["rng.torch"])
    return x, y, meta["round"], meta["config"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics file ``path`` up to the first that is not a whole JSON object (a
    killed run may leave half a line); none where there is no file."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def truncate_metrics(path: Path, rounds: int) -> list[dict[str, Any]]:
    """Keep the metrics lines of rounds ≤ ``rounds`` (a run killed after its last checkpoint may
    have written more, or half a line), rewriting the file atomically; returns them."""
    kept = list(itertools.takewhile(lambda row: row.get("round", rounds + 1) <= rounds,
                                    read_metrics(path)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept
