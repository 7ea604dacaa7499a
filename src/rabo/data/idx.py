"""IDX, the file format of MNIST and Fashion-MNIST (LeCun et al. 1998,
http://yann.lecun.com/exdb/mnist/): a big-endian header, the magic number then one uint32
per dimension, followed by the values in row-major order."""

from __future__ import annotations

import math
from os import PathLike

import numpy as np

from ..errors import DataError

IDX_IMAGES = 0x00000803
"""Magic number of an image file: unsigned bytes (type code 0x08), 3 dimensions (n, rows, cols)."""
IDX_LABELS = 0x00000801
"""Magic number of a label file: unsigned bytes (type code 0x08), 1 dimension (n,)."""


def parse_idx(data: bytes, magic: int, source: str | PathLike) -> np.ndarray:
    """The uint8 array an IDX file's bytes hold, shaped as its header says.

    ``magic`` is the magic number expected (:data:`IDX_IMAGES` or :data:`IDX_LABELS`); its low
    byte is the number of dimensions. ``source`` names the file in error messages.
    """
    if len(data) < 4:
        raise DataError(
            f"'{source}' is truncated: {len(data)} bytes, expected IDX magic number 0x{magic:08x}"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"'{source}' has IDX magic number 0x{found:08x}; expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"'{source}' is truncated: {len(data)} bytes, shorter than its header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = header + math.prod(shape)
    if len(data) != size:
        state = "truncated" if len(data) < size else "longer than its header says"
        raise DataError(
            f"'{source}' is {state}: {len(data)} bytes, expected {size} "
            f"({header}-byte header + shape {shape})"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)
