"""Nothing a Flower run of rabo starts outlives it, even when rabo is killed with SIGKILL.

Every process started for ``rabo flower local``/``simulate`` gets the environment entry
``RABO_FLOWER_RUN=<the run's temporary folder>``; Flower's SuperExec and app processes and
Ray's daemons inherit it, whichever parent, session or process group they end up in, so
:func:`stop_marked` finds them all by it (the marker Jenkins uses to kill a build's processes).
A SIGKILLed parent cannot clean up, so this file, run as a script (stdlib only: it starts in
milliseconds), is the run's supervisor: :func:`supervise` starts it in a session of its own; it
makes the temporary folder, prints its path and reads its stdin, a pipe whose only writer is
rabo. End of file there means rabo is done or dead (the kernel closes a killed process's
pipes): it stops every marked process and removes the folder, unless rabo wrote ``keep``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "RABO_FLOWER_RUN"
POLL_SECONDS = 0.1


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] state, [1] parent pid,
    [2] process group, [19] start time (clock ticks after boot)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` started at ``start`` still runs (a zombie does not)."""
    try:
        fields = _stat(pid)
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def marked(work: str) -> list[tuple[int, int]]:
    """(pid, start time) of every live process, other than this one, whose environment holds
    ``RABO_FLOWER_RUN=work`` (Linux /proc, else none; another user's are not readable)."""
    entry = f"\0{MARK}={work}\0".encode()
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if entry in b"\0" + Path(f"/proc/{name}/environ").read_bytes():
                found.append((int(name), int(_stat(name)[19])))
        except (OSError, IndexError, ValueError):
            continue
    return found


def with_descendants(roots: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """``roots`` and every live descendant of theirs, as (pid, start time): a daemon's children
    that were started without the mark (Ray's agents) are found while their parent lives."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                fields = _stat(name)
                children.setdefault(int(fields[1]), []).append((int(name), int(fields[19])))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop()[0], []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop_marked(work: str, grace: float) -> list[tuple[int, int]]:
    """Stop every process marked with ``work`` and its descendants: SIGTERM, SIGKILL to those
    still running after ``grace`` seconds, and the same to any started meanwhile, until none
    is left or ``grace`` + 10 seconds have passed; returns those left (none, unless a process
    ignores SIGKILL, e.g. one stuck in the kernel)."""
    start = time.monotonic()
    termed: set[tuple[int, int]] = set()
    known: set[tuple[int, int]] = set()
    while True:
        known |= with_descendants([p for p in marked(work) if alive(*p)])
        found = sorted(p for p in known if alive(*p))
        if not found:
            return []
        late = time.monotonic() - start
        if late > grace + 10:
            return found
        for pid, started in found:
            if late > grace or (pid, started) not in termed:
                try:
                    os.kill(pid, signal.SIGKILL if late > grace else signal.SIGTERM)
                except OSError:
                    pass
                termed.add((pid, started))
        time.sleep(POLL_SECONDS)


def supervise() -> tuple[subprocess.Popen, Path]:
    """Start this file as the supervisor of a run; returns it and the run's temporary folder
    (a :class:`RuntimeError` if it did not start). Write ``keep`` to its stdin to keep the
    folder, close stdin to let it clean up, and wait for it."""
    guard = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, start_new_session=True)
    line = guard.stdout.readline().decode().strip() if guard.stdout else ""
    if not line:
        guard.kill()
        guard.wait()
        raise RuntimeError(f"the run's supervisor did not start (exit code {guard.returncode})")
    return guard, Path(line)


def main() -> None:
    """The supervisor: see the module's docstring."""
    for sig in (signal.SIGINT, signal.SIGHUP):   # a terminal's signals are rabo's to handle
        signal.signal(sig, signal.SIG_IGN)
    work = tempfile.mkdtemp(prefix="rabo-flower-")
    print(work, flush=True)
    said = sys.stdin.buffer.read()
    stop_marked(work, grace=3.0)
    if b"keep" not in said:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
