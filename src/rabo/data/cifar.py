"""CIFAR-10 batch files (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) in both
distributed layouts: binary records, and Python pickles read by an unpickler that can build
nothing but dicts, lists, bytes and NumPy arrays, so a tampered file cannot run code."""

from __future__ import annotations

import io
import pickle
from os import PathLike

import numpy as np
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer

from ..errors import DataError

CIFAR_PIXELS = 3 * 32 * 32
CIFAR_RECORD = 1 + CIFAR_PIXELS
"""A binary record: one label byte, then the red, green and blue 32×32 planes, row-major."""


def parse_cifar_bin(data: bytes, source: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 3, 32, 32) and labels (n,) from a binary batch (``data_batch_1.bin``)."""
    if not data or len(data) % CIFAR_RECORD:
        raise DataError(
            f"'{source}' is {len(data)} bytes; expected a positive multiple of {CIFAR_RECORD} "
            f"(CIFAR-10 binary records: 1 label byte + {CIFAR_PIXELS} pixel bytes)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


def parse_cifar_pickle(data: bytes, source: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 3, 32, 32) and labels (n,) from a Python batch (``data_batch_1``): a
    pickled dict with ``b"data"``, uint8 (n, 3072), and ``b"labels"``, a list of n ints."""
    try:
        batch = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as e:  # a malformed pickle can fail in many ways; all mean the same here
        raise DataError(
            f"'{source}' is not a readable CIFAR-10 python batch: {_one_line(repr(e))}"
        ) from e
    if not (isinstance(batch, dict) and b"data" in batch and b"labels" in batch):
        found = (
            "a dict with keys " + _one_line(", ".join(sorted(map(repr, batch))[:8]))
            if isinstance(batch, dict)
            else type(batch).__name__
        )
        raise DataError(f"'{source}' holds {found}; expected a dict with b'data' and b'labels'")
    pixels, labels = batch[b"data"], batch[b"labels"]
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and pixels.ndim == 2
        and pixels.shape[1] == CIFAR_PIXELS
    ):
        found = (
            f"{pixels.dtype} {pixels.shape}"
            if isinstance(pixels, np.ndarray)
            else type(pixels).__name__
        )
        raise DataError(
            f"b'data' in '{source}' is {found}; expected a uint8 array (n, {CIFAR_PIXELS})"
        )
    if len(pixels) == 0:
        raise DataError(f"b'data' in '{source}' holds no images; expected (n ≥ 1, {CIFAR_PIXELS})")
    if not (
        isinstance(labels, list)
        and len(labels) == len(pixels)
        and all(type(label) is int for label in labels)
    ):
        raise DataError(
            f"b'labels' in '{source}' is not a list of {len(pixels)} ints, one per image"
        )
    return pixels.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Pickle protocol 2 spells a non-empty bytes object ``_codecs.encode(text, "latin1")``;
    this stands in for ``_codecs.encode`` and does that and nothing else."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only on text, to latin1")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """Pickle protocol 2 spells ``b""`` as ``bytes()``; this stands in for ``bytes``."""
    return b""


_ALLOWED_GLOBALS = {
    # NumPy's array reconstruction: pickles by NumPy 1.x (CIFAR-10's own files) and 2.x.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5 (default from Python 3.14)
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # How protocol 2, written by Python 3, spells bytes.
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain dicts, lists, bytes and NumPy arrays; refuses every other global."""

    def __init__(self, file: io.BytesIO, source: str | PathLike):
        super().__init__(file, encoding="bytes")  # Python 2's str, as in CIFAR-10's files
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {_one_line(f'{module}.{name}')} from '{self.source}': "
                "only plain dicts, lists, bytes and NumPy arrays are allowed"
            ) from None


def _one_line(text: str) -> str:
    return text if text.isprintable() else ascii(text)
