"""rabo on Flower (docs/algorithm.md §2, §8): a ServerApp whose loop is rabo's own run
loop (:func:`rabo.runtime.loop.run` over :func:`rabo.rounds.run_round`) and a ClientApp
that runs rabo's client step exactly as the simulator does; the messages
(:mod:`rabo.runtime.wire`) carry NumPy arrays, never pickle. :mod:`rabo.runtime.local`
starts both on this machine.
A SuperNode states which rabo clients it hosts in its node config (``client-ids="0,3,6"``
or ``client-id=K``; optionally ``data-dir=...``); a node of Flower's simulation engine,
given ``partition-id=p`` and ``num-partitions=N``, hosts clients p, p+N, p+2N, …. The
ServerApp first asks every node (a ``query.hello`` message), then sends each node, per
phase, one ``train`` message with the jobs of the clients it hosts (with one client per
node: one message per job). A client no node hosts, or a phase no client answers, stops
the run with a one-line :class:`~rabo.errors.NoClientsError` (the rounds done
checkpointed), never a finished run with nothing trained. A SuperNode of Flower 1.41
handles its messages one at a time, each in a fresh ``flwr-clientapp`` process, so one
message per node keeps a phase at one process start per node. The run config carries
``rabo-config`` (the resolved config as JSON), ``out-dir``, ``timeout`` (seconds a phase
waits for replies, finite and > 0) and ``resume``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from ..accounting import FlopCache
from ..config import PHASE_TIMEOUT_MAX, RunConfig, check_seconds
from ..errors import NoClientsError
from ..experiment import Experiment, build
from ..rounds import Job, Reply
from .loop import run
from .simulate import LocalTransport
from .wire import decode_jobs, decode_reply, encode_jobs, encode_replies

POLL_SECONDS = 0.5


# --- ClientApp -------------------------------------------------------------------------
def hosted_clients(node_config: dict[str, Any], clients: int) -> list[int]:
    """The rabo client ids a node hosts: those its node config names
    (``client-ids="0,3,6"`` or ``client-id=K``) or, on Flower's simulation engine, which
    gives node p of N the config ``partition-id=p``, ``num-partitions=N``, clients p,
    p+N, p+2N, … below ``clients``."""
    if "client-ids" not in node_config and "client-id" not in node_config \
            and "partition-id" in node_config:
        partition = int(node_config["partition-id"])
        nodes = int(node_config["num-partitions"])
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
    return Message(RecordDict({"node": ConfigRecord({"client-ids": ids})}),
                   reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """The client steps of one phase for the node's clients, through the simulator's own
    transport (so the same steps and FLOP counts); a client not hosted here gets no
    reply."""
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


# --- ServerApp -------------------------------------------------------------------------
def discover(grid: Grid, clients: int, wait: float) -> dict[int, int]:
    """Ask each connected node which rabo clients it hosts, until every one of
    ``clients`` has a node; returns client id → node id (the first node claiming it). A
    client without a node after ``wait`` seconds stops the run (:class:`NoClientsError`):
    it would fail every round."""
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
    nodes = len(set(hosts.values()))
    log(INFO, "rabo: %d node(s) host %d of %d clients", nodes, len(hosts), clients)
    if missing := sorted(set(range(clients)) - set(hosts)):
        raise NoClientsError(
            f"no node hosts client(s) {_ids(missing)} of {clients} after {wait:g}s "
            f"({nodes} node(s) answered); a node names its clients in its node config "
            f"(client-ids=\"0,3,6\"), or hosts clients p, p+N, … as partition-id p of "
            f"num-partitions N on Flower's simulation engine")
    return hosts


def _ids(ids: Sequence[int], shown: int = 8) -> str:
    """Client ids for a one-line message: the first ``shown``, then how many more."""
    head = ",".join(str(i) for i in ids[:shown])
    return head + (f",… ({len(ids)} in all)" if len(ids) > shown else "")


@dataclass
class FlowerTransport:
    """rabo's :class:`~rabo.rounds.Transport` over Flower: one ``train`` message per node
    and phase, carrying the jobs of the clients it hosts; replies awaited up to
    ``timeout`` seconds. A client without a node, a node that errs or does not answer in
    time, and a reply that is not the job's (missing, other tensor names or shapes) give
    None: the driver counts that client as failed. A phase in which no client answered
    stops the run (:class:`NoClientsError`): the round would keep x and y as they were.
    """

    grid: Grid
    hosts: dict[int, int]
    timeout: float

    def __call__(self, phase: str, round: int,
                 jobs: Sequence[Job]) -> list[Reply | None]:
        replies: list[Reply | None] = [None] * len(jobs)
        by_node: dict[int, list[int]] = {}
        for k, job in enumerate(jobs):
            if job.client in self.hosts:
                by_node.setdefault(self.hosts[job.client], []).append(k)
            else:
                log(WARNING, "round %d %s: no node hosts client %d", round + 1, phase,
                    job.client)
        messages = [Message(encode_jobs(phase, round, [jobs[k] for k in ks]),
                            dst_node_id=node, message_type=MessageType.TRAIN,
                            group_id=str(round + 1), ttl=self.timeout)
                    for node, ks in by_node.items()]
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
            log(WARNING, "round %d %s: client %d did not answer within %gs", round + 1,
                phase, jobs[k].client, self.timeout)
        if jobs and all(reply is None for reply in replies):
            raise NoClientsError(
                f"round {round + 1} {phase}: none of the {len(jobs)} client(s) "
                f"{_ids([job.client for job in jobs])} answered within "
                f"{self.timeout:g}s (the log names each one's failure); the rounds done "
                f"are checkpointed")
        return replies

    @staticmethod
    def _reply(message: Message, phase: str, round: int, job: Job) -> Reply | None:
        if message.has_error():
            log(WARNING, "round %d %s: client %d failed: %s", round + 1, phase,
                job.client, message.error.reason)
            return None
        try:
            return decode_reply(message.content, phase, job)
        except (KeyError, TypeError, ValueError) as err:
            log(WARNING, "round %d %s: reply of client %d rejected (%s: %s)", round + 1,
                phase, job.client, type(err).__name__, err)
            return None


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the experiment from the run config, learn which node hosts which client, and
    run every round with the loop ``rabo run`` uses (same files, checkpoints, progress)."""
    settings = context.run_config
    timeout = check_seconds("timeout", settings.get("timeout", 600.0), PHASE_TIMEOUT_MAX)
    exp = build(RunConfig(**json.loads(str(settings["rabo-config"]))))
    out = Path(str(settings["out-dir"])) if settings.get("out-dir") else None
    hosts = discover(grid, exp.config.clients, timeout)
    transport = FlowerTransport(grid, hosts, timeout)
    run(exp, out, progress=True, resume=bool(settings.get("resume", False)),
        transport=transport)
