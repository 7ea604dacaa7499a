"""Image classification data sets read from a user's data directory in their standard on-disk
layouts, never downloaded: MNIST and Fashion-MNIST (IDX files, raw or gzipped) and CIFAR-10
(binary or Python batches). Images come back float32 (n, channels, height, width) in [0, 1],
labels int64 in 0 .. 9.

Search order, first match wins (a folder matches when it holds any of the expected files;
it must then hold all of them):

- ``mnist``: ``<data_dir>/mnist/``, ``<data_dir>/MNIST/raw/`` (torchvision's), ``<data_dir>/``.
- ``fashion-mnist``: ``<data_dir>/fashion-mnist/``, ``<data_dir>/FashionMNIST/raw/``,
  ``<data_dir>/``. In each IDX folder a raw file is read before its ``.gz``.
- ``cifar10``: ``<data_dir>/cifar-10-batches-bin/``, ``<data_dir>/cifar-10-batches-py/``, then
  the binary and then the Python batch files directly in ``<data_dir>/``.

The named subfolders come before ``<data_dir>`` itself so that a directory holding one data
set's files and another's subfolder is never read as the wrong one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import DataError, lookup
from .cifar import parse_cifar_bin, parse_cifar_pickle
from .digits import ArrayData
from .idx import IDX_IMAGES, IDX_LABELS, parse_idx

NUM_CLASSES = 10
"""MNIST, Fashion-MNIST and CIFAR-10 all have ten classes."""

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_FOLDERS = ("mnist", "MNIST/raw", "")
FASHION_MNIST_FOLDERS = ("fashion-mnist", "FashionMNIST/raw", "")
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch")  # fmt: skip
CIFAR_BIN_BATCHES = tuple(f"{name}.bin" for name in CIFAR_BATCHES)
CIFAR_LAYOUTS = (
    ("cifar-10-batches-bin", CIFAR_BIN_BATCHES),
    ("cifar-10-batches-py", CIFAR_BATCHES),
    ("", CIFAR_BIN_BATCHES),
    ("", CIFAR_BATCHES),
)

Split = tuple[ArrayData, ArrayData]


def load_mnist(data_dir: str | PathLike) -> Split:
    """MNIST (LeCun et al. 1998): (train, test), 60,000 and 10,000 images (n, 1, 28, 28)."""
    return _load_idx("MNIST", data_dir, MNIST_FOLDERS)


def load_fashion_mnist(data_dir: str | PathLike) -> Split:
    """Fashion-MNIST (Xiao et al. 2017): (train, test), 60,000 and 10,000 images (n, 1, 28, 28)."""
    return _load_idx("Fashion-MNIST", data_dir, FASHION_MNIST_FOLDERS)


def load_cifar10(data_dir: str | PathLike) -> Split:
    """CIFAR-10 (Krizhevsky 2009): (train, test), 50,000 and 10,000 images (n, 3, 32, 32), RGB;
    the binary batches are read when both layouts are present."""
    expected = (
        "cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin) or cifar-10-batches-py/ "
        "(data_batch_1..5, test_batch) in it, or either's files directly in it"
    )
    paths = find_files("CIFAR-10", data_dir, CIFAR_LAYOUTS, expected)
    parse = parse_cifar_bin if paths[0].suffix == ".bin" else parse_cifar_pickle
    batches = []
    for path in paths:
        images, labels = parse(read_bytes(path), path)
        batches.append((images, _checked_labels(labels, path)))
    train_images, train_labels = (np.concatenate(column) for column in zip(*batches[:-1]))
    test_images, test_labels = batches[-1]
    return (
        ArrayData(_unit_interval(train_images), train_labels, NUM_CLASSES),
        ArrayData(_unit_interval(test_images), test_labels, NUM_CLASSES),
    )


DATASETS: dict[str, Callable[[str | PathLike], Split]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def load_dataset(name: str, data_dir: str | PathLike | None) -> Split:
    """(train, test) of the data set ``name``, a key of :data:`DATASETS`, read from ``data_dir``
    (search order in the module docstring)."""
    loader = lookup(DATASETS, "dataset", name)
    if data_dir is None:
        raise DataError(
            f"--data-dir is required for dataset {name!r}: its files are read from there, "
            "never downloaded"
        )
    return loader(data_dir)


def find_files(
    title: str,
    data_dir: str | PathLike,
    layouts: Sequence[tuple[str, Sequence[str]]],
    expected: str,
    gz: bool = False,
) -> list[Path]:
    """The paths of a layout's files, for the first layout ``(subfolder, names)`` whose folder
    ``data_dir/subfolder`` holds any of them; with ``gz``, ``<name>.gz`` stands in for a
    missing ``<name>``. ``title`` and ``expected`` word the error when none matches."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        state = "is not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data directory '{data_dir}' {state}; expected {title} in it")
    suffixes = ("", ".gz") if gz else ("",)
    for subfolder, names in layouts:
        folder = data_dir / subfolder
        found = [
            next((folder / (name + s) for s in suffixes if (folder / (name + s)).is_file()), None)
            for name in names
        ]
        if any(found):
            missing = [
                name + ("(.gz)" if gz else "") for name, path in zip(names, found) if path is None
            ]
            if missing:
                raise DataError(f"incomplete {title} in '{folder}': missing {', '.join(missing)}")
            return found
    raise DataError(f"no {title} in '{data_dir}': expected {expected}")


MAX_FILE_BYTES = 1 << 30
"""The most a data file may hold once decompressed (MNIST's largest is 47 MB): a gzip bomb is
refused after that much, not decompressed whole."""


def read_bytes(path: Path) -> bytes:
    """A file's contents, decompressed when its name ends in ``.gz``, at most
    :data:`MAX_FILE_BYTES`."""
    try:
        if path.suffix != ".gz":
            if path.stat().st_size > MAX_FILE_BYTES:
                raise DataError(f"'{path}' is larger than {MAX_FILE_BYTES:,} bytes")
            return path.read_bytes()
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)        # gzip framing
        data = inflate.decompress(path.read_bytes(), MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise DataError(f"'{path}' decompresses to more than {MAX_FILE_BYTES:,} bytes")
        if not inflate.eof:
            raise EOFError("compressed file ended before the end-of-stream marker")
        return data
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read '{path}': {e}") from e


def _load_idx(title: str, data_dir: str | PathLike, folders: Sequence[str]) -> Split:
    expected = (
        ", ".join(f"{name}(.gz)" for name in IDX_FILES)
        + " in "
        + ", ".join(f"{folder}/" for folder in folders if folder)
        + " or the directory itself"
    )
    paths = find_files(
        title, data_dir, [(folder, IDX_FILES) for folder in folders], expected, gz=True
    )
    return _idx_split(*paths[:2]), _idx_split(*paths[2:])


def _idx_split(images_path: Path, labels_path: Path) -> ArrayData:
    images = parse_idx(read_bytes(images_path), IDX_IMAGES, images_path)
    labels = parse_idx(read_bytes(labels_path), IDX_LABELS, labels_path)
    if len(images) == 0:
        raise DataError(f"'{images_path}' holds no images; expected the data set's")
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"'{images_path}' holds {images.shape[1]}x{images.shape[2]} images; expected 28x28"
        )
    if len(images) != len(labels):
        raise DataError(
            f"'{images_path}' holds {len(images)} images but '{labels_path}' "
            f"{len(labels)} labels; they must match"
        )
    return ArrayData(
        _unit_interval(images[:, None]), _checked_labels(labels, labels_path), NUM_CLASSES
    )


def _unit_interval(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]."""
    unit = pixels.astype(np.float32)
    unit /= 255
    return unit


def _checked_labels(labels: np.ndarray, source: Path) -> np.ndarray:
    """``labels`` as int64, after checking they are class indices (naming the file if not)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"labels in '{source}' span [{labels.min()}, {labels.max()}]; "
            f"allowed: 0 .. {NUM_CLASSES - 1}"
        )
    return labels.astype(np.int64)
