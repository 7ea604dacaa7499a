"""Long-tailed federated classification data for loss tuning (docs/algorithm.md §7 `losstuning`,
paper V-B).

A balanced test set is held out first; the rest is subsampled to the long-tailed counts
n_c = ⌊n_max · ρ^(−c/(C−1))⌋, partitioned over M clients (IID or Dirichlet(α) label skew) and
split per client, stratified, into train (for g_i) and validation (for f_i), so that the
validation part is long-tailed too. Clients hold index arrays into one shared input array.
All randomness comes from a passed ``numpy.random.Generator`` (or a seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, lookup
from .digits import ArrayData

MAX_DIRICHLET_DRAWS = 100
"""Dirichlet partitions are redrawn (from the same generator) until no client is empty."""


def _floor(value: float) -> int:
    """⌊value⌋, immune to float noise such as 0.29·100 = 28.999999999999996."""
    return math.floor(round(value, 9))


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} {value!r} is not allowed; allowed: an integer >= {low}")


def _check_rho(rho: float) -> None:
    if not (isinstance(rho, (int, float, np.number)) and 1.0 <= rho < math.inf):
        raise ConfigError(f"rho {rho!r} is not allowed; allowed: an imbalance ratio >= 1")


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float, np.number)) and 0.0 < alpha < math.inf):
        raise ConfigError(f"alpha {alpha!r} is not allowed; allowed: a Dirichlet concentration > 0")


def _check_val_fraction(val_fraction: float) -> None:
    if not (isinstance(val_fraction, (int, float, np.number)) and 0.0 < val_fraction < 1.0):
        raise ConfigError(f"val_fraction {val_fraction!r} is not allowed; allowed: (0, 1)")


def _by_class(labels: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
    """The members of ``idx`` of each class 0 .. max(labels), in idx's order."""
    idx = np.asarray(idx, dtype=np.int64)
    of_idx = labels[idx]
    return [idx[of_idx == c] for c in range(int(labels.max()) + 1)]


def longtail_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
    """Per-class counts n_c = ⌊n_max · ρ^(−c/(C−1))⌋ (at least 1), c = 0 .. C−1: class 0 is the
    head with n_max, class C−1 the tail with ⌊n_max/ρ⌋ (docs/algorithm.md §7)."""
    _check_int("n_max", n_max, 1)
    _check_int("num_classes", num_classes, 1)
    _check_rho(rho)
    if num_classes == 1:
        return [n_max]
    return [max(1, _floor(n_max * rho ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def balanced_test_split(
    labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``per_class`` random examples of every class as the balanced test set.

    Returns sorted ``(train_idx, test_idx)`` covering all of ``labels``.
    """
    _check_int("test_per_class", per_class, 1)
    labels = np.asarray(labels)
    train, test = [], []
    for c, members in enumerate(_by_class(labels, np.arange(len(labels)))):
        if len(members) < per_class:
            raise ConfigError(
                f"test_per_class {per_class} is not allowed: class {c} has only {len(members)} "
                f"examples; allowed: at most {len(members)}"
            )
        members = rng.permutation(members)
        test.append(members[:per_class])
        train.append(members[per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_longtail(
    labels: np.ndarray,
    idx: np.ndarray,
    rho: float,
    rng: np.random.Generator,
    n_max: int | None = None,
) -> np.ndarray:
    """Subsample ``idx`` (sorted result) to ``longtail_counts(n_max, C, rho)`` examples per class;
    ``n_max`` defaults to the smallest class count in ``idx``, so every class can supply it."""
    _check_rho(rho)
    labels = np.asarray(labels)
    members = _by_class(labels, idx)
    available = [len(m) for m in members]
    if n_max is None:
        n_max = min(available)
        if n_max == 0:
            raise DataError(f"class {available.index(0)} has no examples in idx to subsample")
    counts = longtail_counts(n_max, len(members), rho)
    for c, (need, have) in enumerate(zip(counts, available)):
        if need > have:
            raise ConfigError(
                f"n_max {n_max} is not allowed with rho {rho}: class {c} needs {need} examples "
                f"but has {have}; allowed: n_max <= {min(available)}"
            )
    chosen = [rng.choice(m, size=n, replace=False) for m, n in zip(members, counts)]
    return np.sort(np.concatenate(chosen))


def _iid(
    labels: np.ndarray, idx: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float
) -> list[np.ndarray]:
    """Shuffle, then split as evenly as possible (sizes differ by at most one)."""
    return np.array_split(rng.permutation(idx), num_clients)


def _dirichlet(
    labels: np.ndarray, idx: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float
) -> list[np.ndarray]:
    """Label skew: each class's examples go to the clients in proportions p_c ~ Dir(α·1_M)."""
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in _by_class(labels, idx):
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(rng.permutation(members), cuts)):
                parts[client].append(piece)
        clients = [np.concatenate(p) for p in parts]
        if min(len(c) for c in clients) > 0:
            return clients
    raise ConfigError(
        f"alpha {alpha} left a client empty in {MAX_DIRICHLET_DRAWS} draws of {len(idx)} examples "
        f"over {num_clients} clients; allowed: a larger alpha or fewer clients"
    )


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {"iid": _iid, "dirichlet": _dirichlet}


def partition(
    labels: np.ndarray,
    idx: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    scheme: str = "iid",
    alpha: float = 0.5,
) -> list[np.ndarray]:
    """Split ``idx`` over ``num_clients`` disjoint, non-empty, sorted index arrays, by ``scheme``
    (``"iid"`` or ``"dirichlet"`` with concentration ``alpha``)."""
    split = lookup(PARTITIONS, "partition scheme", scheme)
    _check_int("num_clients", num_clients, 1)
    _check_alpha(alpha)
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) < num_clients:
        raise ConfigError(
            f"num_clients {num_clients} is not allowed for {len(idx)} examples; "
            f"allowed: at most {len(idx)}"
        )
    return [np.sort(c) for c in split(np.asarray(labels), idx, num_clients, rng, alpha)]


def validation_count(n: int, val_fraction: float) -> int:
    """Validation examples of a class with n examples: max(1, ⌊f·n⌋) when n ≥ 2, else 0."""
    return 0 if n < 2 else max(1, _floor(val_fraction * n))


def train_val_split(
    labels: np.ndarray, idx: np.ndarray, rng: np.random.Generator, val_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """One client's stratified split of ``idx`` into sorted ``(train_idx, val_idx)``: per class,
    ``validation_count(n, val_fraction)`` random examples go to validation."""
    _check_val_fraction(val_fraction)
    train, val = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for members in _by_class(np.asarray(labels), idx):
        members = rng.permutation(members)
        n_val = validation_count(len(members), val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass
class FederatedData(ArrayData):
    """One shared ``inputs``/``labels`` pair; each client is ``(train_idx, val_idx)`` into it and
    ``test_idx`` is the balanced test set. Indices are disjoint across clients and the test set."""

    clients: list[tuple[np.ndarray, np.ndarray]]
    test_idx: np.ndarray


def federated_longtail(
    inputs: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    num_clients: int,
    rho: float,
    seed: int,
    test_per_class: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    val_fraction: float = 0.2,
    test_idx: np.ndarray | None = None,
) -> FederatedData:
    """Balanced test split (or the data set's own ``test_idx``), long-tailed subsample (ρ) of
    the rest, partition over clients, then each client's stratified train/validation split;
    the same seed gives identical splits."""
    data = ArrayData(inputs, labels, num_classes)  # checks the arrays before any drawing
    rng = np.random.default_rng(seed)
    if test_idx is None:
        pool, test_idx = balanced_test_split(data.labels, test_per_class, rng)
    else:
        pool = np.setdiff1d(np.arange(len(data.labels)), test_idx)
    longtail = make_longtail(data.labels, pool, rho, rng)
    parts = partition(data.labels, longtail, num_clients, rng, scheme, alpha)
    clients = [train_val_split(data.labels, part, rng, val_fraction) for part in parts]
    return FederatedData(data.inputs, data.labels, num_classes, clients, test_idx)


def sample_batch(
    data: ArrayData, idx: np.ndarray, batch_size: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """A minibatch from ``idx`` without replacement (all of ``idx``, in order, when
    ``batch_size >= len(idx)``), as float32 inputs and int64 labels."""
    _check_int("batch_size", batch_size, 1)
    if len(idx) == 0:
        raise DataError("cannot sample a batch from an empty index set")
    chosen = idx if batch_size >= len(idx) else rng.choice(idx, size=batch_size, replace=False)
    inputs = torch.from_numpy(np.ascontiguousarray(data.inputs[chosen], dtype=np.float32))
    return inputs, torch.from_numpy(data.labels[chosen].astype(np.int64))
