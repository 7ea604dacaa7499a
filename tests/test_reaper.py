"""The supervisor of a Flower run (rabo.runtime.reaper): whatever carries the run's mark dies
with the run, also when rabo is killed with SIGKILL, and the run's folder goes with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rabo.runtime import reaper
from rabo.runtime.reaper import MARK, alive, marked, stop_marked, supervise

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="finds processes in /proc")

# Starts the supervisor, then marked processes: a sleep in a session of its own, and a shell
# whose sleep leaves the shell's session too (as Flower's SuperExec and apps do); prints the
# run's folder, then waits to be killed.
PARENT = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from reaper import MARK, supervise
guard, work = supervise()
env = dict(os.environ, **{MARK: str(work)})
subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300"], env=env)
print(work, flush=True)
time.sleep(300)
"""


def start_marked(work: Path | str, code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, **{MARK: str(work)}))


def wait_for(condition, seconds: float) -> float:
    """Seconds until ``condition()`` held (polled every 0.05 s); fails after ``seconds``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds}s"
        time.sleep(0.05)
    return time.monotonic() - start


def started(pid: int) -> tuple[int, int]:
    """(pid, start time) of a running process."""
    return pid, int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_killed_parent_leaves_no_process_and_no_folder():
    """SIGKILL the process that started the supervisor and four marked processes (two in
    sessions of their own): within 10 s all are gone (by pid and start time), the supervisor
    too, and so is the run's folder."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(Path(reaper.__file__).parent)],
                              stdout=subprocess.PIPE, text=True)
    found: list[tuple[int, int]] = []
    work = Path(parent.stdout.readline().strip())
    try:
        assert work.is_dir() and work.name.startswith("rabo-flower-"), work
        wait_for(lambda: len(marked(str(work))) == 4, 30)        # 2 sleeps, sh, its sleep
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        found = sorted(set(marked(str(work))) | {started(int(pid)) for pid in children})
        assert len(found) == 5, found                          # the 4 and the supervisor
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        seconds = wait_for(lambda: not any(alive(*d) for d in found) and not work.exists(), 10)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid, start in found:
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        if work.name.startswith("rabo-flower-"):            # if the supervisor was killed
            shutil.rmtree(work, ignore_errors=True)
    print(f"every marked process and the supervisor gone, the folder removed, {seconds:.2f}s "
          f"after SIGKILL")


@pytest.mark.parametrize("said, kept", [(b"", False), (b"keep", True)])
def test_supervisor_removes_the_folder_unless_told_to_keep_it(said, kept):
    guard, work = supervise()
    proc = start_marked(work, "import time; time.sleep(300)")
    try:
        wait_for(lambda: marked(str(work)) == [started(proc.pid)], 30)
        (work / "superlink.log").write_text("log")
        guard.communicate(said, timeout=30)
        assert proc.wait(timeout=1) == -signal.SIGTERM
        assert work.exists() is kept and (not kept or (work / "superlink.log").exists())
    finally:
        for p in (proc, guard):
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def test_stop_marked_kills_what_ignores_sigterm_and_spares_other_marks(tmp_path):
    """A process ignoring SIGTERM gets SIGKILL after the grace; a process of another run (a
    mark that only begins like this one's) and an unmarked one keep running."""
    work = tmp_path / "rabo-flower-1"
    stubborn = start_marked(work, "import signal, time; signal.signal(signal.SIGTERM, "
                                  "signal.SIG_IGN); print(flush=True); time.sleep(300)")
    other = start_marked(f"{work}0", "import time; time.sleep(300)")
    plain = subprocess.Popen(["sleep", "300"])
    try:
        wait_for(lambda: len(marked(str(work))) == 1 and len(marked(f"{work}0")) == 1, 30)
        time.sleep(0.5)                                  # its SIGTERM handler is set by now
        start = time.monotonic()
        assert stop_marked(str(work), grace=1.0) == []
        seconds = time.monotonic() - start
        assert stubborn.wait(timeout=1) == -signal.SIGKILL
        assert 1.0 <= seconds < 3.0, seconds
        assert other.poll() is None and plain.poll() is None
    finally:
        for p in (stubborn, other, plain):
            if p.poll() is None:
                p.kill()
            p.wait()
