"""`rabo bench` (issue 9): the matmul roofline, rabo's simulator and a naive FedNest-style
reference loop, timed in one process on the same problems, seeds and rounds."""

from __future__ import annotations

from .naive import NaiveLoop
from .roofline import Roofline, matmul_flops
from .runner import WORKLOADS, Workload, bench, format_table, measure, workloads, write_json

__all__ = ["WORKLOADS", "NaiveLoop", "Roofline", "Workload", "bench", "format_table",
           "matmul_flops", "measure", "workloads", "write_json"]
