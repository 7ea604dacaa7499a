"""N-way K-shot episodes from Omniglot classes (docs/algorithm.md §7 `fewshot`, paper V-A).

A task draws N distinct classes from a pool, then K support and Q = 20 − K query drawings of
each (disjoint), rotated by the class's quarter turns and relabelled 0..N−1 in draw order.
All randomness comes from the passed ``numpy.random.Generator``, so a seed fixes the task.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .omniglot import DRAWINGS, ROTATIONS, OmniglotData

Task = dict[str, Tensor]


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer in {low}..{high}")
    return int(value)


def sample_task(data: OmniglotData, class_ids: np.ndarray, ways: int, shots: int,
                queries: int | None, rng: np.random.Generator) -> Task:
    """One N-way K-shot task: ``support`` (N·K, 1, 28, 28) float32 with ``support_labels``
    int64 in 0..N−1 (grouped by class), ``query`` (N·Q, 1, 28, 28) and ``query_labels``.

    ``queries`` (Q) defaults to 20 − K, every drawing not in the support set.
    """
    pool = np.asarray(class_ids, dtype=np.int64)
    if pool.ndim != 1 or len(pool) == 0:
        raise ConfigError(f"class pool of shape {pool.shape}; allowed: a non-empty 1-d array")
    shots = _check_int("shots", shots, 1, DRAWINGS - 1)
    queries = DRAWINGS - shots if queries is None else \
        _check_int("queries", queries, 1, DRAWINGS - shots)
    ways = _check_int("ways", ways, 1, len(pool))
    classes = rng.choice(pool, size=ways, replace=False)
    # one permutation of a character's 20 drawings per class: the first K support, next Q query
    order = rng.permuted(np.tile(np.arange(DRAWINGS), (ways, 1)), axis=1)
    picked = data.drawings[classes // ROTATIONS][np.arange(ways)[:, None], order]
    sets = data.images[picked[:, :shots + queries]]  # (N, K+Q, 28, 28)
    sets = np.stack([np.rot90(s, k=int(t), axes=(-2, -1))
                     for s, t in zip(sets, classes % ROTATIONS, strict=True)])

    def flat(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 1, *x.shape[-2:])))

    labels = torch.arange(ways)
    return {"support": flat(sets[:, :shots]),
            "support_labels": labels.repeat_interleave(shots),
            "query": flat(sets[:, shots:]),
            "query_labels": labels.repeat_interleave(queries)}
