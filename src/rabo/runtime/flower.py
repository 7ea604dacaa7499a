"""rabo on Flower (docs/algorithm.md §2, §8): a ServerApp whose loop is rabo's own round driver
(:func:`rabo.runtime.simulate.run` over :func:`rabo.rounds.run_round`) and a ClientApp that runs
rabo's client step exactly as the simulator does; the messages carry NumPy arrays, never pickle.

A SuperNode states which rabo clients it hosts in its node config (``client-ids="0,3,6"`` or
``client-id=K``; optionally ``data-dir=...``); a node of Flower's simulation engine, given
``partition-id=p`` and ``num-partitions=N``, hosts clients p, p+N, p+2N, …. The ServerApp
first asks every node (a ``query.hello`` message), then sends each node, per phase, one
``train`` message with the jobs of the clients it hosts (with one client per node: one message
per job). A client no node hosts, or a phase no client answers, stops the run with a one-line
:class:`~rabo.errors.NoClientsError` (the rounds done checkpointed), never a finished run with
nothing trained. A SuperNode of Flower 1.41 handles its messages one at a
time, each in a fresh ``flwr-clientapp`` process, so one message per node keeps a phase at one
process start per node. The run config carries ``rabo-config`` (the resolved config as JSON),
``out-dir``, ``timeout`` (seconds a phase waits for replies, finite and > 0) and ``resume``.

:func:`run_local` starts a SuperLink and N SuperNodes on 127.0.0.1 and runs the app on them
(``rabo flower local``), or a SuperLink whose simulation engine simulates N nodes in Ray actors
(``rabo flower simulate``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from ..accounting import FlopCache
from ..config import PHASE_TIMEOUT_MAX, RunConfig, check_seconds
from ..errors import NoClientsError, RaboError
from ..experiment import Experiment, build
from ..rounds import Job, Reply
from ..submodel import Params
from .reaper import MARK, stop_marked, supervise
from .simulate import LocalTransport, run

POLL_SECONDS = 0.5


class FlowerError(RaboError):
    """The Flower deployment did not start or did not finish the run."""


# --- the wire: named arrays <-> ArrayRecord (NumPy, no pickle) ---------------------------------
def to_record(params: Params) -> ArrayRecord:
    """Named tensors as an ArrayRecord of NumPy arrays."""
    return ArrayRecord({n: Array(p.detach().cpu().numpy()) for n, p in params.items()})


def from_record(record: ArrayRecord) -> Params:
    """The inverse of :func:`to_record`; a non-NumPy array raises TypeError."""
    return {n: torch.from_numpy(a.numpy()) for n, a in record.items()}


def encode_jobs(phase: str, round: int, jobs: Sequence[Job]) -> RecordDict:
    """A node's jobs of a phase as message content: per client K, its x̃, ỹ and index sets as
    ArrayRecords ``K/x``, ``K/y``, ``K/index``; phase, round and client ids in ``jobs``."""
    content = RecordDict({"jobs": ConfigRecord({"phase": phase, "round": round,
                                                "clients": [job.client for job in jobs]})})
    for job in jobs:
        content[f"{job.client}/x"] = to_record(job.x)
        content[f"{job.client}/y"] = to_record(job.y)
        content[f"{job.client}/index"] = to_record(job.index)
    return content


def decode_jobs(content: RecordDict) -> tuple[str, int, list[Job]]:
    """The inverse of :func:`encode_jobs`."""
    head = content["jobs"]
    return str(head["phase"]), int(head["round"]), [
        Job(int(k), from_record(content[f"{k}/index"]), from_record(content[f"{k}/x"]),
            from_record(content[f"{k}/y"])) for k in head["clients"]]


def encode_replies(replies: dict[int, Reply]) -> RecordDict:
    """Per client K: Δ as ArrayRecord ``K/delta``, its loss and FLOPs as MetricRecord
    ``K/metrics``."""
    content = RecordDict()
    for client, reply in replies.items():
        content[f"{client}/delta"] = to_record(reply.delta)
        content[f"{client}/metrics"] = MetricRecord({"loss": reply.loss, "flops": reply.flops})
    return content


def decode_reply(content: RecordDict, phase: str, job: Job) -> Reply:
    """Client ``job.client``'s reply; KeyError where it is missing, ValueError where its
    tensors are not the job's submodel's (names and shapes of ỹ in the inner phase, of x̃ in
    the outer)."""
    delta = from_record(content[f"{job.client}/delta"])
    expected = job.y if phase == "inner" else job.x
    shapes = {n: tuple(p.shape) for n, p in delta.items()}
    if shapes != {n: tuple(p.shape) for n, p in expected.items()}:
        raise ValueError(f"tensor shapes {shapes}")
    metrics = content[f"{job.client}/metrics"]
    return Reply({n: delta[n] for n in expected}, float(metrics["loss"]), int(metrics["flops"]))


# --- ClientApp ---------------------------------------------------------------------------------
def hosted_clients(node_config: dict[str, Any], clients: int) -> list[int]:
    """The rabo client ids a node hosts: those its node config names (``client-ids="0,3,6"``
    or ``client-id=K``) or, on Flower's simulation engine, which gives node p of N the config
    ``partition-id=p``, ``num-partitions=N``, clients p, p+N, p+2N, … below ``clients``."""
    if "client-ids" not in node_config and "client-id" not in node_config \
            and "partition-id" in node_config:
        partition, nodes = int(node_config["partition-id"]), int(node_config["num-partitions"])
        return list(range(partition, clients, nodes))
    ids = node_config.get("client-ids", node_config.get("client-id", ""))
    return [int(i) for i in str(ids).split(",") if i.strip()]


@lru_cache(maxsize=1)
def _experiment(config_json: str, data_dir: str | None) -> tuple[Experiment, FlopCache]:
    """The run's experiment, built once per process, and the process's FLOP counts."""
    config = RunConfig(**json.loads(config_json))
    if data_dir is not None:
        config.data_dir = data_dir
    exp = build(config)
    if exp.config.threads is not None:
        torch.set_num_threads(exp.config.threads)
    return exp, FlopCache()


client_app = ClientApp()


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    """Tell the server which rabo clients this node hosts."""
    config = RunConfig(**json.loads(str(context.run_config["rabo-config"])))
    ids = hosted_clients(context.node_config, config.clients)
    return Message(RecordDict({"node": ConfigRecord({"client-ids": ids})}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """The client steps of one phase for the node's clients, through the simulator's own
    transport (so the same steps and FLOP counts); a client not hosted here gets no reply."""
    phase, round, jobs = decode_jobs(message.content)
    data_dir = context.node_config.get("data-dir")
    exp, flops = _experiment(str(context.run_config["rabo-config"]),
                             None if data_dir is None else str(data_dir))
    hosted = set(hosted_clients(context.node_config, exp.config.clients))
    for job in jobs:
        if job.client not in hosted:
            log(WARNING, "client %d is not hosted on this node", job.client)
    jobs = [job for job in jobs if job.client in hosted]
    replies = LocalTransport(exp, flops)(phase, round, jobs)
    return Message(encode_replies({job.client: reply for job, reply in zip(jobs, replies)
                                   if reply is not None}), reply_to=message)


# --- ServerApp ---------------------------------------------------------------------------------
def discover(grid: Grid, clients: int, wait: float) -> dict[int, int]:
    """Ask each connected node which rabo clients it hosts, until every one of ``clients`` has
    a node; returns client id → node id (the first node claiming it). A client without a node
    after ``wait`` seconds stops the run (:class:`NoClientsError`): it would fail every round."""
    deadline = time.monotonic() + wait
    asked: set[int] = set()
    pending: dict[str, int] = {}
    hosts: dict[int, int] = {}
    while len(hosts) < clients and time.monotonic() < deadline:
        new = [n for n in grid.get_node_ids() if n not in asked]
        asked.update(new)
        if new:
            ids = grid.push_messages([Message(RecordDict(), dst_node_id=n,
                                              message_type=f"{MessageType.QUERY}.hello",
                                              ttl=wait) for n in new])
            pending.update({m: n for m, n in zip(ids, new) if m})
        for reply in grid.pull_messages(list(pending)) if pending else []:
            node = pending.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                log(WARNING, "node %d did not say which clients it hosts: %s", node,
                    reply.error.reason)
                continue
            for client in reply.content["node"]["client-ids"]:
                if 0 <= int(client) < clients:
                    hosts.setdefault(int(client), node)
        if len(hosts) < clients:
            time.sleep(POLL_SECONDS)
    log(INFO, "rabo: %d node(s) host %d of %d clients", len(set(hosts.values())), len(hosts),
        clients)
    if missing := sorted(set(range(clients)) - set(hosts)):
        raise NoClientsError(
            f"no node hosts client(s) {_ids(missing)} of {clients} after {wait:g}s "
            f"({len(set(hosts.values()))} node(s) answered); a node names its clients in its "
            f"node config (client-ids=\"0,3,6\"), or hosts clients p, p+N, … as partition-id "
            f"p of num-partitions N on Flower's simulation engine")
    return hosts


def _ids(ids: Sequence[int], shown: int = 8) -> str:
    """Client ids for a one-line message: the first ``shown``, then how many more."""
    head = ",".join(str(i) for i in ids[:shown])
    return head + (f",… ({len(ids)} in all)" if len(ids) > shown else "")


@dataclass
class FlowerTransport:
    """rabo's :class:`~rabo.rounds.Transport` over Flower: one ``train`` message per node and
    phase, carrying the jobs of the clients it hosts; replies awaited up to ``timeout``
    seconds. A client without a node, a node that errs or does not answer in time, and a reply
    that is not the job's (missing, other tensor names or shapes) give None: the driver counts
    that client as failed. A phase in which no client answered stops the run
    (:class:`NoClientsError`): the round would keep x and y as they were."""

    grid: Grid
    hosts: dict[int, int]
    timeout: float

    def __call__(self, phase: str, round: int, jobs: Sequence[Job]) -> list[Reply | None]:
        replies: list[Reply | None] = [None] * len(jobs)
        by_node: dict[int, list[int]] = {}
        for k, job in enumerate(jobs):
            if job.client in self.hosts:
                by_node.setdefault(self.hosts[job.client], []).append(k)
            else:
                log(WARNING, "round %d %s: no node hosts client %d", round + 1, phase, job.client)
        messages = [Message(encode_jobs(phase, round, [jobs[k] for k in ks]), dst_node_id=node,
                            message_type=MessageType.TRAIN, group_id=str(round + 1),
                            ttl=self.timeout) for node, ks in by_node.items()]
        ids = self.grid.push_messages(messages) if messages else []
        waiting = {m: ks for m, ks in zip(ids, by_node.values()) if m}
        deadline = time.monotonic() + self.timeout
        while waiting and time.monotonic() < deadline:
            for message in self.grid.pull_messages(list(waiting)):
                for k in waiting.pop(message.metadata.reply_to_message_id, []):
                    replies[k] = self._reply(message, phase, round, jobs[k])
            if waiting:
                time.sleep(POLL_SECONDS)
        for k in (k for ks in waiting.values() for k in ks):
            log(WARNING, "round %d %s: client %d did not answer within %gs", round + 1, phase,
                jobs[k].client, self.timeout)
        if jobs and all(reply is None for reply in replies):
            raise NoClientsError(
                f"round {round + 1} {phase}: none of the {len(jobs)} client(s) "
                f"{_ids([job.client for job in jobs])} answered within {self.timeout:g}s "
                f"(the log names each one's failure); the rounds done are checkpointed")
        return replies

    @staticmethod
    def _reply(message: Message, phase: str, round: int, job: Job) -> Reply | None:
        if message.has_error():
            log(WARNING, "round %d %s: client %d failed: %s", round + 1, phase, job.client,
                message.error.reason)
            return None
        try:
            return decode_reply(message.content, phase, job)
        except (KeyError, TypeError, ValueError) as err:
            log(WARNING, "round %d %s: reply of client %d rejected (%s: %s)", round + 1, phase,
                job.client, type(err).__name__, err)
            return None


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the experiment from the run config, learn which node hosts which client, and run
    every round with the simulator's loop (same files, checkpoints and progress lines)."""
    settings = context.run_config
    timeout = check_seconds("timeout", settings.get("timeout", 600.0), PHASE_TIMEOUT_MAX)
    exp = build(RunConfig(**json.loads(str(settings["rabo-config"]))))
    out = Path(str(settings["out-dir"])) if settings.get("out-dir") else None
    transport = FlowerTransport(grid, discover(grid, exp.config.clients, timeout), timeout)
    run(exp, out, progress=True, resume=bool(settings.get("resume", False)),
        transport=transport)


# --- rabo flower local: a SuperLink and N SuperNodes on 127.0.0.1 --------------------------------
APP_TOML = """\
[project]
name = "rabo-flower"
version = "1.0.0"
description = "rabo's ServerApp and ClientApp (generated by rabo flower local)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "rabo"

[tool.flwr.app.components]
serverapp = "rabo.runtime.flower:server_app"
clientapp = "rabo.runtime.flower:client_app"

[tool.flwr.app.config]
rabo-config = {config}
out-dir = {out}
timeout = {timeout}
resume = {resume}
"""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float, log_file: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerError(f"the SuperLink exited with code {proc.returncode}; see {log_file}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FlowerError(f"the SuperLink did not listen on 127.0.0.1:{port} within {seconds:g}s")


def stop_processes(procs: Sequence[subprocess.Popen], work: str, grace: float = 10.0) -> None:
    """Stop every process of the run marked with ``work`` (:func:`~rabo.runtime.reaper.
    stop_marked`: those started here and all they started, Flower's SuperExec and app
    processes included, wherever they were reparented), SIGKILL after ``grace`` seconds, and
    reap those started here (without Linux's /proc, only these are found, and killed)."""
    stop_marked(work, grace)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class SimulationEngine:
    """Flower's simulation engine in place of SuperNode processes: the SuperLink simulates the
    nodes and runs the ClientApp in a pool of Ray actors, one per ``node_cpus`` of the ``cpus``
    Ray may use (default: all of this machine's), each with ``node_gpus`` GPUs (a fraction
    shares one GPU among actors)."""

    cpus: int | None = None
    node_cpus: int = 1
    node_gpus: float = 0.0

    def __post_init__(self) -> None:
        cpus = self.ray_cpus
        for name, value in (("cpus", cpus), ("node_cpus", self.node_cpus)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlowerError(f"{name}={value!r} is not allowed; give an integer ≥ 1")
        if self.node_cpus > cpus:
            raise FlowerError(f"node_cpus={self.node_cpus} is more than the {cpus} CPU(s) Ray "
                              f"may use, so no node could run; give node_cpus ≤ cpus")
        if not (math.isfinite(self.node_gpus) and self.node_gpus >= 0):
            raise FlowerError(f"node_gpus={self.node_gpus!r} is not allowed; give a number ≥ 0")

    @property
    def ray_cpus(self) -> int:
        return (os.cpu_count() or 1) if self.cpus is None else self.cpus

    def federation_config(self, supernodes: int) -> str:
        """The ``--federation-config`` of ``flwr run`` for ``supernodes`` simulated nodes."""
        return (f"num-supernodes={supernodes} init-args-num-cpus={self.ray_cpus} "
                f"client-resources-num-cpus={self.node_cpus} "
                f"client-resources-num-gpus={float(self.node_gpus)}")


def _run_outcome(env: dict[str, str], flwr: str, seconds: float = 30.0) -> tuple[str, str]:
    """Status (e.g. ``finished:failed``) and its details of the run on this FLWR_HOME's
    SuperLink, once finished (``flwr list``; the SuperLink holds only this run)."""
    deadline = time.monotonic() + seconds
    status = details = ""
    while time.monotonic() < deadline:
        listing = subprocess.run([flwr, "list", "--format", "json"], env=env, text=True,
                                 capture_output=True, stdin=subprocess.DEVNULL, check=False)
        try:
            runs = json.loads(listing.stdout)["runs"]
            status, details = str(runs[-1]["status"]), str(runs[-1]["status-details"])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            status = details = ""
        if status.startswith("finished"):
            break
        time.sleep(0.5)
    return status, details


MAX_SUPERNODES = 256


def node_count(supernodes: int | None, clients: int, simulated: bool) -> int:
    """The nodes of a run of ``clients`` clients: ``supernodes`` (default: 3 SuperNodes, or on
    the simulation engine one node per client, never more than ``clients``), refused unless
    an integer from 1 to ``clients``: node k hosts clients k, k+N, …, so one more would host
    none. SuperNodes are processes (two each with its SuperExec), at most
    :data:`MAX_SUPERNODES`; a simulated node is a record in the SuperLink."""
    if supernodes is None:
        return clients if simulated else min(3, clients)
    most = clients if simulated else min(clients, MAX_SUPERNODES)
    if isinstance(supernodes, bool) or not isinstance(supernodes, int) \
            or not 1 <= supernodes <= most:
        why = "one node per client at most" if most == clients else \
            f"at most {MAX_SUPERNODES} SuperNode processes"
        raise FlowerError(f"supernodes={supernodes!r} is not allowed; give an integer from 1 to "
                          f"{most} ({why}, {clients} clients)")
    return supernodes


def _ended(code: int) -> str:
    """A process's exit code in words."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def _stop_when_ended(link: subprocess.Popen, flwr: subprocess.Popen) -> threading.Event:
    """Watch the SuperLink while ``flwr run`` streams: if it ends first, stop ``flwr run``
    (it would wait for the SuperLink); returns the event that ends the watch."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            if link.poll() is not None:
                flwr.terminate()
                return

    threading.Thread(target=watch, daemon=True).start()
    return done


def run_local(exp: Experiment, out: Path, supernodes: int | None = None,
              timeout: float = 600.0, resume: bool = False, quiet: bool = False,
              engine: SimulationEngine | None = None) -> None:
    """Run ``exp`` on Flower on this machine: a SuperLink and ``supernodes`` SuperNodes on
    127.0.0.1 (node k hosts clients k, k+N, k+2N, …), or with ``engine`` a SuperLink that
    simulates ``supernodes`` nodes (node p: partition-id p, hosting the same clients), the app
    submitted with ``flwr run``, its log streamed here; the ServerApp writes ``out`` as
    ``rabo run`` does. A run the ServerApp failed (e.g. no client answered a phase) or whose
    SuperLink ended raises :class:`FlowerError` with its reason, the logs of every process
    kept in the temporary folder it names; else that folder is removed. Every process started
    here, and all they start, is stopped on return, failure, Ctrl-C or SIGTERM, and by the
    run's supervisor (:mod:`rabo.runtime.reaper`), with the folder, if this process is
    killed."""
    supernodes = node_count(supernodes, exp.config.clients, engine is not None)
    timeout = check_seconds("timeout", timeout, PHASE_TIMEOUT_MAX)
    federation = [] if engine is None else \
        ["--federation-config", engine.federation_config(supernodes)]
    started = time.time()
    bin_dir = str(Path(sys.executable).parent)
    try:
        guard, work = supervise()
    except RuntimeError as err:
        raise FlowerError(str(err)) from None
    env = dict(os.environ, FLWR_HOME=str(work / "home"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2",
               PYTHONUNBUFFERED="1", PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
               RAY_ADDRESS="local", RAY_TMPDIR=str(work),  # a Ray of its own, files in work
               **{MARK: str(work)})                         # how every process is found

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log_file = open(work / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(command, env=env, stdout=log_file,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True))
        log_file.close()
        return procs[-1]

    procs: list[subprocess.Popen] = []
    keep_logs = False
    on_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM cleans up like Ctrl-C
        on_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        link_port, *node_ports = _free_ports(1 + (supernodes if engine is None else 0))
        (work / "home").mkdir()
        (work / "home" / "config.toml").write_text(
            '[superlink]\ndefault = "rabo-local"\n\n[superlink.rabo-local]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
        (work / "app").mkdir()
        (work / "app" / "pyproject.toml").write_text(APP_TOML.format(
            config=json.dumps(json.dumps(exp.config.to_dict())),
            out=json.dumps(str(out.resolve())), timeout=float(timeout),
            resume="true" if resume else "false"))
        link = start("superlink", [f"{bin_dir}/flower-superlink", "--insecure",
                                   "--disable-runtime-dependency-installation",
                                   "--host", "127.0.0.1", "--port", str(link_port)]
                     + ([] if engine is None else ["--simulation"]))
        _wait_for_port(link_port, link, 60.0, work / "superlink.log")
        for k, port in enumerate(node_ports):
            ids = ",".join(str(i) for i in range(k, exp.config.clients, supernodes))
            start(f"supernode-{k}", [f"{bin_dir}/flower-supernode", "--insecure",
                                     "--superlink", f"127.0.0.1:{link_port}",
                                     "--host", "127.0.0.1", "--port", str(port),
                                     "--node-config", f'client-ids="{ids}"'])
        flwr = subprocess.Popen([f"{bin_dir}/flwr", "run", str(work / "app"), "--stream",
                                 *federation],
                                env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(flwr)
        watching = _stop_when_ended(link, flwr)
        try:
            with open(work / "flwr-run.log", "wb") as log_file:  # the run's log, unless quiet
                for line in flwr.stdout or []:
                    log_file.write(line)
                    if not quiet:
                        sys.stdout.buffer.write(line)
                        sys.stdout.flush()
        finally:
            watching.set()
        flwr.wait()
        if link.poll() is not None:
            raise FlowerError(f"the SuperLink {_ended(link.returncode)} during the run; the "
                              f"run's last checkpoint stays in {str(out)!r}; logs in {work}")
        if flwr.returncode != 0:
            raise FlowerError(f"'flwr run' exited with code {flwr.returncode}; logs in {work}")
        status, details = _run_outcome(env, f"{bin_dir}/flwr")
        if status != "finished:completed":
            reason = re.sub(r"^\w+ failed with exception: ", "", details).strip()
            reason = reason.splitlines()[0] if reason else f"it ended {status or 'unknown'}"
            raise FlowerError(f"the Flower run failed: {reason}; logs in {work}")
        final = out / "final.safetensors"
        if not final.exists() or final.stat().st_mtime < started:
            raise FlowerError(f"the Flower run ended without finishing {str(out)!r}; "
                              f"logs in {work}")
    except FlowerError:
        keep_logs = True
        raise
    finally:
        stop_processes(procs, str(work))
        guard.communicate(b"keep" if keep_logs else b"")   # it removes work unless kept
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
