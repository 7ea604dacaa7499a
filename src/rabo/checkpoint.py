"""Checkpoints: the full server state as one safetensors file (tensors + JSON metadata), written
atomically (temp file + fsync + rename), never pickle, and sealed with a SHA-256 of its
tensors and metadata that loading checks, so a flipped bit or an edited value is refused
rather than resumed. Client samplers, masks, capacities and faults are pure functions of
(seed, round, client), so x, y, the round and the global RNG states resume a run
bit-identically."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import DataError
from .rundir import atomic_write
from .submodel import Params

FILE = "checkpoint/state.safetensors"
FORMAT = "rabo-checkpoint-2"
LEGACY = "rabo-checkpoint-1"      # before checksums: read, unchecked, so old runs still resume
SEAL = "sha256"


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (names sorted) and the
    metadata (keys sorted, the seal itself aside)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != SEAL}, sort_keys=True).encode())
    return h.hexdigest()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """``tensors`` and ``meta`` as a sealed safetensors file at ``path``, atomically; the same
    tensors and metadata give the same bytes (:func:`_sorted_metadata`)."""
    tensors = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
    meta = {**meta, SEAL: _digest(tensors, meta)}
    atomic_write(path, _sorted_metadata(save_bytes(tensors, metadata=meta)))


def _sorted_metadata(data: bytes) -> bytes:
    """Safetensors file ``data`` with the metadata in its header in key order. The library
    writes it in a random order (a Rust HashMap, seeded anew each time), so the same run
    wrote different bytes each time; the header is padded with spaces to 8 bytes as the
    library pads it, and the tensors' bytes follow unchanged (offsets count from there)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def _metadata(path: Path) -> dict[str, str]:
    """The metadata of safetensors file ``path`` from its header alone; a missing file raises
    FileNotFoundError, an unreadable one ValueError."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 2 <= size <= 100_000_000:
            raise ValueError(f"header size {size}")
        header = json.loads(fh.read(size))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("no metadata")
    return meta


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file :func:`write_tensors` wrote, its seal checked; anything
    else (missing, truncated, edited, unsealed) is a one-line DataError naming the file."""
    try:
        data = path.read_bytes()
        tensors = load_bytes(data)
        meta = _metadata(path)
    except FileNotFoundError:
        raise DataError(f"{str(path)!r} does not exist") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"{str(path)!r} is corrupt or not written by rabo "
                        f"({(str(err).splitlines() or [type(err).__name__])[0][:80]})") from None
    if meta.get("format") != LEGACY and meta.get(SEAL) != _digest(tensors, meta):
        raise DataError(f"{str(path)!r} fails its checksum: its bytes changed after rabo wrote "
                        f"them (a flipped bit or an edit); it cannot be trusted")
    return tensors, meta


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [random.getstate()[0], list(random.getstate()[1]), None]}


def _set_rng_states(states: Any, torch_state: torch.Tensor) -> None:
    """Restore the global RNGs; states of the wrong shape or type raise ValueError before
    any RNG changes."""
    try:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        numpy_state = (kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss),
                       float(gauss))
        version, internal, gauss_next = states["python"]
        python_state = (version, tuple(int(v) for v in internal), gauss_next)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"RNG states: {err}") from None
    if torch_state.dtype != torch.uint8 or torch_state.shape != torch.get_rng_state().shape \
            or kind != "MT19937" or numpy_state[1].shape != (624,) or len(internal) != 625:
        raise ValueError("RNG states of the wrong size or kind")
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    torch.set_rng_state(torch_state)


def rng_snapshot() -> tuple[torch.Tensor, dict[str, Any]]:
    """The global RNG states now, for :func:`restore_rng`."""
    return torch.get_rng_state(), _rng_states()


def restore_rng(snapshot: tuple[torch.Tensor, dict[str, Any]]) -> None:
    torch_state, states = snapshot
    _set_rng_states(states, torch_state)


def save(out: Path, x: Params, y: Params, round: int, config: dict[str, Any]) -> Path:
    """Write the state after ``round`` completed rounds to ``out/checkpoint/``, atomically."""
    path = out / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"x.{n}": p for n, p in x.items()} | {f"y.{n}": p for n, p in y.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": FORMAT, "round": str(round), "config": json.dumps(config),
            "rng": json.dumps(_rng_states())}
    write_tensors(path, tensors, meta)
    return path


def _read(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's tensors and its parsed metadata (round, config, RNG states), its seal
    checked first; a missing, truncated, edited or foreign file is a one-line DataError."""
    path = out / FILE
    if not path.is_file():
        raise DataError(f"no checkpoint in {str(out)!r}: expected {FILE}")
    tensors, meta = read_tensors(path)
    try:
        if meta.get("format") not in (FORMAT, LEGACY):
            raise ValueError(f"format {meta.get('format')!r}")
        done, config = int(meta["round"]), json.loads(meta["config"])
        if done < 0 or not isinstance(config, dict):
            raise ValueError(f"round {done}" if done < 0 else "config is no JSON object")
        return tensors, {"round": done, "config": config, "rng": json.loads(meta["rng"])}
    except (ValueError, KeyError) as err:
        raise DataError(f"checkpoint {str(path)!r} is corrupt or not a rabo checkpoint "
                        f"({(str(err).splitlines() or [type(err).__name__])[0][:80]})") \
            from None


def peek(out: Path) -> dict[str, Any]:
    """The checkpoint's round, config and RNG states, its seal checked (see :func:`_read`)."""
    return _read(out)[1]


def load(out: Path, like: tuple[Params, Params]) -> tuple[Params, Params, int, dict[str, Any]]:
    """(x, y, completed rounds, config) from ``out``'s checkpoint, its seal, names, shapes,
    dtypes and RNG states checked, restoring the RNG states. Tensors come back in the order of
    ``like`` (the problem's own), so every sum over them rounds as in an uninterrupted run."""
    tensors, meta = _read(out)
    path = out / FILE
    names = [f"x.{n}" for n in like[0]] + [f"y.{n}" for n in like[1]]
    if sorted(names) != sorted(n for n in tensors if n[:2] in ("x.", "y.")):
        raise DataError(f"checkpoint in {str(out)!r} holds other parameters than this problem's "
                        f"(problem {meta['config'].get('problem')!r})")
    for name, want in zip(names, [*like[0].values(), *like[1].values()], strict=True):
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise DataError(f"checkpoint {str(path)!r}: {name} is {got.dtype} "
                            f"{list(got.shape)}, this problem's is {want.dtype} "
                            f"{list(want.shape)}")
    x = {n: tensors[f"x.{n}"] for n in like[0]}
    y = {n: tensors[f"y.{n}"] for n in like[1]}
    try:
        _set_rng_states(meta["rng"], tensors.get("rng.torch", torch.empty(0)))
    except ValueError as err:
        raise DataError(f"checkpoint {str(path)!r} holds unusable {err}") from None
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

