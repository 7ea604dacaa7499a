"""A run directory's files and their safety: rabo writes config.json, metrics.jsonl,
checkpoint/state.safetensors, final.safetensors and a lock file, each whole file atomically;
``--overwrite`` removes only these, and the lock keeps a second process from writing the same
directory."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError, DataError

CONFIG, METRICS, FINAL, LOCK = "config.json", "metrics.jsonl", "final.safetensors", "rabo.lock"
CHECKPOINT_DIR = "checkpoint"
# every name rabo writes: the files (episodes.csv by rabo reproduce), their temporary twins,
# and names older versions used
WRITTEN = {CONFIG, METRICS, FINAL, LOCK, CHECKPOINT_DIR, "episodes.csv", "metrics.tmp"} | {
    f"{n}.tmp" for n in (CONFIG, METRICS, FINAL)}
MARK = {"problem", "method", "rounds", "clients", "seed", "capacities", "problem_options"}
WRITTEN_IN_CHECKPOINT = {"state.safetensors", "state.safetensors.tmp", "state.tmp"}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary twin, fsynced, renamed over it, and the
    directory fsynced, so a crash or signal at any moment leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (an flock on ``out/rabo.lock``, creating ``out``) while writing it;
    a directory another process holds is a one-line DataError naming that process."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / LOCK, "a+")  # noqa: SIM115 (held until the block ends)
    except OSError as err:
        raise DataError(f"cannot write run directory {str(out)!r}: "
                        f"{err.strerror or type(err).__name__}") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise DataError(f"run directory {str(out)!r} is in use by another rabo process "
                            f"(pid {holder}); wait for it to end or choose another --out") \
                from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()                       # closing releases the lock


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a config.json rabo wrote, the mark of a run directory: a JSON
    object whose keys are fields of :class:`RunConfig`, among them those every version of
    rabo wrote (an older run may lack a field added since)."""
    try:
        values = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and \
        MARK <= set(values) <= {f.name for f in dataclasses.fields(RunConfig)}


def clear(out: Path) -> None:
    """Empty run directory ``out`` for ``--overwrite``, removing only the files rabo writes.
    Refused with a one-line ConfigError: the current directory or one holding it, a path that
    is no directory, a directory holding anything rabo did not write or without a config.json
    of rabo's; every check passes before anything is removed."""
    where = f"--overwrite refused for {str(out)!r}"
    if not out.is_dir():
        raise ConfigError(f"{where}: it is not a directory")
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise ConfigError(f"{where}: it is the current directory or holds it; choose another "
                          f"--out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in WRITTEN)
    checkpoint = out / CHECKPOINT_DIR
    if checkpoint.is_dir():
        foreign += sorted(f"{CHECKPOINT_DIR}/{p.name}" for p in checkpoint.iterdir()
                          if p.name not in WRITTEN_IN_CHECKPOINT or not p.is_file())
    elif checkpoint.exists():
        foreign.append(CHECKPOINT_DIR)
    if foreign:
        raise ConfigError(f"{where}: it holds files rabo did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); remove them or choose "
                          f"another --out")
    if {p.name for p in out.iterdir()} - {LOCK} and not is_run_config(out / CONFIG):
        raise ConfigError(f"{where}: it is not a rabo run directory (no config.json written "
                          f"by rabo run)")
    with locked(out):
        for name in sorted(WRITTEN_IN_CHECKPOINT):
            (checkpoint / name).unlink(missing_ok=True)
        if checkpoint.is_dir():
            checkpoint.rmdir()
        for name in sorted(WRITTEN - {LOCK, CHECKPOINT_DIR}):
            (out / name).unlink(missing_ok=True)


def write_config(out: Path, config: dict[str, Any]) -> None:
    """config.json of a new run, and an empty metrics.jsonl, both atomically."""
    atomic_write(out / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    atomic_write(out / METRICS, b"")


def logged_rounds(out: Path, rounds: int) -> list[dict[str, Any]]:
    """The metrics rows of rounds 1..``rounds`` (what ``out``'s checkpoint vouches for), and
    metrics.jsonl rewritten to hold exactly their lines: a tail a stopped run wrote past its
    checkpoint, or half a line, is dropped. A row among them missing or corrupt cannot be
    recomputed; that is a one-line DataError."""
    path = out / METRICS
    try:
        lines = path.read_bytes().split(b"\n") if path.exists() else []
    except OSError as err:
        raise DataError(f"cannot read {str(path)!r}: {err.strerror}") from None
    rows = []
    for k in range(1, rounds + 1):
        try:
            row = json.loads(lines[k - 1])
            ok = isinstance(row, dict) and row.get("round") == k
        except (IndexError, ValueError):
            ok = False
        if not ok:
            state = "missing" if k > len(lines) or not lines[k - 1] else "corrupt"
            raise DataError(f"cannot resume {str(out)!r}: line {k} of {METRICS} (round {k}) is "
                            f"{state}, and the checkpoint is at round {rounds}; start again "
                            f"with --overwrite")
        rows.append(row)
    atomic_write(path, b"".join(line + b"\n" for line in lines[:rounds]))
    return rows
