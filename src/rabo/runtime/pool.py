"""Independent runs in a pool of worker processes (``rabo reproduce --jobs N``): each worker is
spawned (never forked after torch started its threads), sets its own torch thread count and
runs one task after another; Ctrl-C stops every worker once, so that each run checkpoints,
and waits for them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

# a task runs fn(*args) in a worker and answers an outcome: (DONE | DIVERGED | FAILED, why)
Outcome = tuple[str, str]
Task = Callable[..., Outcome]
DONE, DIVERGED, FAILED = "done", "diverged", "failed"
STARTED, FINISHED = "started", "finished"


def _serve(conn: Connection, fn: Task, threads: int) -> None:
    """A worker: in a process group of its own, so that a Ctrl-C at the terminal reaches the
    parent only and each worker is stopped exactly once, by the parent (a second SIGINT during
    the run's checkpoint would interrupt it); runs the tasks it is sent until None."""
    import torch

    os.setpgrp()
    torch.set_num_threads(threads)
    try:
        while (task := conn.recv()) is not None:
            name, args = task
            conn.send((name, fn(*args)))
    except (KeyboardInterrupt, EOFError):
        pass                      # stopped by the parent (the run checkpointed), or it is gone


def run_tasks(fn: Task, tasks: dict[str, tuple], jobs: int, threads: int,
              report: Callable[[str, str, Outcome | None], None]) -> dict[str, Outcome]:
    """Run ``fn(*tasks[name])`` for every name in ``jobs`` worker processes of ``threads``
    torch threads each, in order as workers come free; ``report(name, STARTED | FINISHED,
    outcome)`` in this process as each starts and ends. Returns name → outcome; a worker
    that dies fails its task and is replaced. On KeyboardInterrupt every worker gets
    one SIGINT and is waited for (a second Ctrl-C meanwhile is ignored), then it is re-raised."""
    ctx = multiprocessing.get_context("spawn")
    queue = list(tasks.items())
    workers: dict[Connection, BaseProcess] = {}
    running: dict[Connection, str] = {}
    outcomes: dict[str, Outcome] = {}

    def start() -> None:
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, fn, threads), name="rabo-worker")
        proc.start()
        child.close()
        workers[conn] = proc
        feed(conn)

    def feed(conn: Connection) -> None:
        """Send the worker the next task, or None to end it; one gone since its last task
        (killed) is replaced, the task kept."""
        task = queue.pop(0) if queue else None
        try:
            conn.send(task)
        except OSError:
            workers.pop(conn).join()
            if task is not None:
                queue.insert(0, task)
                start()
            return
        if task is not None:
            running[conn] = task[0]
            report(task[0], STARTED, None)

    def finish(name: str, outcome: Outcome) -> None:
        outcomes[name] = outcome
        report(name, FINISHED, outcome)

    seen: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        seen.append(signum)       # kept also where Python swallows the exception below
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if main else None
    try:
        for _ in range(min(jobs, len(queue))):
            start()
        while running:
            if seen:              # a Ctrl-C whose exception a library call swallowed
                raise KeyboardInterrupt
            ready = wait([*running, *(workers[c].sentinel for c in running)], timeout=0.5)
            for conn in [c for c in running if c in ready or workers[c].sentinel in ready]:
                name = running.pop(conn)
                try:
                    reply = conn.recv()
                except (EOFError, OSError):      # the worker died (killed, out of memory)
                    proc = workers.pop(conn)
                    proc.join()
                    finish(name, (FAILED, f"its worker process exited with code {proc.exitcode}"))
                    if queue:
                        start()
                    continue
                finish(*reply)
                feed(conn)
        for proc in workers.values():
            proc.join()
    except KeyboardInterrupt:
        _stop(list(workers.values()))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return outcomes


def _stop(procs: list[BaseProcess]) -> None:
    """SIGINT to every live worker (its run checkpoints and it exits), then wait for all."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join()
    finally:
        signal.signal(signal.SIGINT, previous)
