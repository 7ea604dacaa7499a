"""rabo's messages on Flower: named tensors as ArrayRecords of NumPy arrays (never
pickle), a node's jobs of a phase and its clients' replies as RecordDicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..rounds import Job, Reply
from ..submodel import Params


def to_record(params: Params) -> ArrayRecord:
    """Named tensors as an ArrayRecord of NumPy arrays."""
    return ArrayRecord({n: Array(p.detach().cpu().numpy()) for n, p in params.items()})


def from_record(record: ArrayRecord) -> Params:
    """The inverse of :func:`to_record`; a non-NumPy array raises TypeError."""
    return {n: torch.from_numpy(a.numpy()) for n, a in record.items()}


def encode_jobs(phase: str, round: int, jobs: Sequence[Job]) -> RecordDict:
    """A node's jobs of a phase as message content: per client K, its x̃, ỹ and index
    sets as ArrayRecords ``K/x``, ``K/y``, ``K/index``; phase, round and client ids in
    ``jobs``."""
    head = {"phase": phase, "round": round, "clients": [job.client for job in jobs]}
    content = RecordDict({"jobs": ConfigRecord(head)})
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
        content[f"{client}/metrics"] = MetricRecord({"loss": reply.loss,
                                                     "flops": reply.flops})
    return content


def decode_reply(content: RecordDict, phase: str, job: Job) -> Reply:
    """Client ``job.client``'s reply; KeyError where it is missing, ValueError where its
    tensors are not the job's submodel's (names and shapes of ỹ in the inner phase, of x̃
    in the outer)."""
    delta = from_record(content[f"{job.client}/delta"])
    expected = job.y if phase == "inner" else job.x
    shapes = {n: tuple(p.shape) for n, p in delta.items()}
    if shapes != {n: tuple(p.shape) for n, p in expected.items()}:
        raise ValueError(f"tensor shapes {shapes}")
    metrics = content[f"{job.client}/metrics"]
    return Reply({n: delta[n] for n in expected}, float(metrics["loss"]),
                 int(metrics["flops"]))
