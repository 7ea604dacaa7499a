"""Independent runs in a pool of worker processes (``rabo reproduce --jobs N``): each
worker is spawned (never forked after torch started its threads), sets its own torch
thread count and runs one task after another; Ctrl-C stops every worker once, so that
each run checkpoints, and waits for them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

# a task runs fn(*args) in a worker and answers (DONE | DIVERGED | FAILED, why)
Outcome = tuple[str, str]
Task = Callable[..., Outcome]
DONE, DIVERGED, FAILED = "done", "diverged", "failed"
STARTED, FINISHED = "started", "finished"


def _serve(conn: Connection, fn: Task, threads: int) -> None:
    """A worker: in a process group of its own, so that a Ctrl-C at the terminal reaches
    the parent only and each worker is stopped exactly once, by the parent (a second
    SIGINT during the run's checkpoint would interrupt it); runs the tasks it is sent
    until None."""
    import torch

    os.setpgrp()
    torch.set_num_threads(threads)
    try:
        while (task := conn.recv()) is not None:
            name, args = task
            conn.send((name, fn(*args)))
    except (KeyboardInterrupt, EOFError):
        pass              # stopped by the parent (the run checkpointed), or it is gone


def run_tasks(fn: Task, tasks: dict[str, tuple], jobs: int, threads: int,
              report: Callable[[str, str, Outcome | None], None]) -> dict[str, Outcome]:
    """Run ``fn(*tasks[name])`` for every name in ``jobs`` worker processes of
    ``threads`` torch threads each, in order as workers come free; ``report(name, STARTED
    | FINISHED, outcome)`` in this process as each starts and ends. Returns name →
    outcome; a worker that dies fails its task and is replaced. On KeyboardInterrupt
    every worker gets one SIGINT and is waited for (a second Ctrl-C meanwhile is
    ignored), then it is re-raised."""
    pool = _Pool(fn, threads, list(tasks.items()), report)
    seen: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        seen.append(signum)       # kept also where Python swallows the exception below
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if main else None
    try:
        for _ in range(min(jobs, len(pool.queue))):
            pool.start()
        while pool.running:
            if seen:              # a Ctrl-C whose exception a library call swallowed
                raise KeyboardInterrupt
            pool.collect(timeout=0.5)
        for proc in pool.workers.values():
            proc.join()
    except KeyboardInterrupt:
        _stop(list(pool.workers.values()))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return pool.outcomes


class _Pool:
    """:func:`run_tasks`'s workers: ``queue`` holds the tasks not yet sent, ``running``
    the task name of each busy worker (by its connection), ``outcomes`` those finished.
    """

    def __init__(self, fn: Task, threads: int, queue: list[tuple[str, tuple]],
                 report: Callable[[str, str, Outcome | None], None]):
        self.fn, self.threads, self.queue, self.report = fn, threads, queue, report
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: dict[Connection, BaseProcess] = {}
        self.running: dict[Connection, str] = {}
        self.outcomes: dict[str, Outcome] = {}

    def start(self) -> None:
        """A new worker, fed the next task."""
        conn, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.fn, self.threads),
                                name="rabo-worker")
        proc.start()
        child.close()
        self.workers[conn] = proc
        self.feed(conn)

    def feed(self, conn: Connection) -> None:
        """Send the worker the next task, or None to end it; one gone since its last task
        (killed) is replaced, the task kept."""
        task = self.queue.pop(0) if self.queue else None
        try:
            conn.send(task)
        except OSError:
            self.workers.pop(conn).join()
            if task is not None:
                self.queue.insert(0, task)
                self.start()
            return
        if task is not None:
            self.running[conn] = task[0]
            self.report(task[0], STARTED, None)

    def collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for workers to answer or die; record each
        answer (feeding that worker its next task) and fail the task of each that died (a
        new worker in its place while tasks remain)."""
        ready = wait([*self.running, *(self.workers[c].sentinel for c in self.running)],
                     timeout=timeout)
        for conn in [c for c in self.running
                     if c in ready or self.workers[c].sentinel in ready]:
            name = self.running.pop(conn)
            try:
                reply = conn.recv()
            except (EOFError, OSError):      # the worker died (killed, out of memory)
                proc = self.workers.pop(conn)
                proc.join()
                why = f"its worker process exited with code {proc.exitcode}"
                self.finish(name, (FAILED, why))
                if self.queue:
                    self.start()
                continue
            self.finish(*reply)
            self.feed(conn)

    def finish(self, name: str, outcome: Outcome) -> None:
        self.outcomes[name] = outcome
        self.report(name, FINISHED, outcome)


def _stop(procs: list[BaseProcess]) -> None:
    """SIGINT to every live worker (its run checkpoints and it exits), then wait for all.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join()
    finally:
        signal.signal(signal.SIGINT, previous)
