"""Data set readers (MNIST, Fashion-MNIST, CIFAR-10) in their standard on-disk layouts: real
Fashion-MNIST from the shared data directory, and small files each test writes itself."""

from __future__ import annotations

import builtins
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from rabo.data.readers import DATASETS, load_dataset
from rabo.errors import DataError, UnknownNameError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- Fashion-MNIST, the real thing -------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_mnist():
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"no Fashion-MNIST in {SHARED_DATA}")
    return load_dataset("fashion-mnist", SHARED_DATA)  # found in its fashion-mnist/ subfolder


def test_fashion_mnist_has_60000_train_and_10000_test_balanced(fashion_mnist):
    train, test = fashion_mnist
    for split, n in ((train, 60_000), (test, 10_000)):
        assert split.inputs.shape == (n, 1, 28, 28)
        assert split.inputs.dtype == np.float32 and split.labels.dtype == np.int64
        assert split.inputs.min() == 0.0 and split.inputs.max() == 1.0
        assert split.num_classes == 10
        assert np.bincount(split.labels).tolist() == [n // 10] * 10
    # Known facts of the data set: its first labels (ankle boot, T-shirt, ...) and the
    # training mean and std everyone normalises with.
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert train.inputs.mean(dtype=np.float64) == pytest.approx(0.2860, abs=1e-4)
    assert train.inputs.std(dtype=np.float64) == pytest.approx(0.3530, abs=1e-4)


# --- MNIST layout, small files ------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0800 + ndim, big-endian dims, then the values."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def random_idx_split(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def write_idx_dataset(folder: Path, seed: int = 0, suffix: str = ".gz", n_train=7, n_test=5):
    """Writes the four IDX files of a tiny MNIST-like set; returns its uint8 (train, test)."""
    splits = random_idx_split(seed, n_train), random_idx_split(seed + 1, n_test)
    for prefix, (images, labels) in zip(("train", "t10k"), splits):
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    return splits


def assert_split_equals(split, images: np.ndarray, labels: np.ndarray, channels: int = 1) -> None:
    assert split.inputs.dtype == np.float32 and split.labels.dtype == np.int64
    assert split.inputs.shape == (len(images), channels, *images.shape[-2:])
    np.testing.assert_array_equal(
        split.inputs, images.reshape(split.inputs.shape).astype(np.float32) / 255
    )
    np.testing.assert_array_equal(split.labels, labels.astype(np.int64))


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("subfolder", ["", "mnist", "MNIST/raw"])
def test_mnist_reads_back_idx_files_exactly(tmp_path, suffix, subfolder):
    (train_images, train_labels), (test_images, test_labels) = write_idx_dataset(
        tmp_path / subfolder, suffix=suffix
    )
    train, test = load_dataset("mnist", tmp_path)
    assert_split_equals(train, train_images, train_labels)
    assert_split_equals(test, test_images, test_labels)
    assert train.inputs[0, 0, 0, :2].tolist() == [0.0, 1.0]


def test_idx_search_prefers_subfolder_then_raw_over_gz(tmp_path):
    write_idx_dataset(tmp_path, seed=0)  # the directory itself: searched last
    (images, labels), _ = write_idx_dataset(tmp_path / "mnist", seed=10, suffix="")
    write_idx_dataset(tmp_path / "mnist", seed=20, suffix=".gz")  # raw files come first
    write_idx_dataset(tmp_path / "MNIST" / "raw", seed=30)  # after mnist/
    train, _ = load_dataset("mnist", tmp_path)
    assert_split_equals(train, images, labels)


def test_fashion_mnist_searches_its_own_subfolders(tmp_path):
    (mnist_images, mnist_labels), _ = write_idx_dataset(tmp_path / "mnist", seed=0)
    (images, labels), _ = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", seed=40)
    train, _ = load_dataset("fashion-mnist", tmp_path)
    assert_split_equals(train, images, labels)
    train, _ = load_dataset("mnist", tmp_path)
    assert_split_equals(train, mnist_images, mnist_labels)


# --- CIFAR-10, small files in both layouts -------------------------------------------------


def random_cifar_batch(seed: int, n: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def cifar_bin_bytes(pixels: np.ndarray, labels: list[int]) -> bytes:
    return b"".join(bytes([label]) + row.tobytes() for row, label in zip(pixels, labels))


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's str (BINSTRING) and names NumPy 1.x's module, as the
    cPickle that wrote CIFAR-10's own python batches did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin1")
        short = len(obj) < 256
        length = bytes([len(obj)]) if short else struct.pack("<i", len(obj))
        self.write((pickle.SHORT_BINSTRING if short else pickle.BINSTRING) + length + obj)

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())

    dispatch[str] = dispatch[bytes] = save_bytes


def cifar_pickle_bytes(pixels: np.ndarray, labels: list, protocol) -> bytes:
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": pixels}
    if protocol == "python2":
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(batch)
        return buffer.getvalue()
    return pickle.dumps(batch) if protocol is None else pickle.dumps(batch, protocol=protocol)


def write_cifar_dataset(data_dir: Path, layout: str, seed: int = 0, protocol=None, sizes=None):
    """Writes six tiny CIFAR-10 batches in ``layout`` ("bin" or "py"); returns their contents."""
    folder = data_dir / f"cifar-10-batches-{layout}"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = [random_cifar_batch(seed + i, n) for i, n in enumerate(sizes or [3, 2, 4, 1, 2, 3])]
    for name, (pixels, labels) in zip(names, batches):
        if layout == "bin":
            write(folder / f"{name}.bin", cifar_bin_bytes(pixels, labels))
        else:
            write(folder / name, cifar_pickle_bytes(pixels, labels, protocol))
    return batches


def assert_cifar_equals(split, batches) -> None:
    pixels = np.concatenate([pixels for pixels, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    assert_split_equals(split, pixels.reshape(-1, 3, 32, 32), labels, channels=3)


@pytest.mark.parametrize(
    "layout, protocol", [("bin", None), ("py", 2), ("py", None), ("py", 5), ("py", "python2")]
)
def test_cifar10_reads_back_batches_exactly(tmp_path, layout, protocol):
    batches = write_cifar_dataset(tmp_path, layout, protocol=protocol)
    train, test = load_dataset("cifar10", tmp_path)
    assert_cifar_equals(train, batches[:5])
    assert_cifar_equals(test, batches[5:])
    assert len(train.labels) == 12 and len(test.labels) == 3


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar10_channels_are_red_green_blue_planes_row_major(tmp_path, layout):
    # One image whose byte k (after the label) is k mod 251: plane 0 is red, then green, blue.
    pixels = (np.arange(3072) % 251).astype(np.uint8)[None]
    write_cifar_dataset(tmp_path, layout, sizes=[1] * 6)
    folder = tmp_path / f"cifar-10-batches-{layout}"
    if layout == "bin":
        (folder / "test_batch.bin").write_bytes(bytes([7]) + pixels.tobytes())
    else:
        (folder / "test_batch").write_bytes(cifar_pickle_bytes(pixels, [7], None))
    _, test = load_dataset("cifar10", tmp_path)
    image = test.inputs[0] * 255
    assert test.labels.tolist() == [7]
    assert image[0, 0, 1] == 1  # red, row 0, column 1
    assert image[0, 1, 0] == 32  # red, row 1
    assert image[1, 0, 0] == 1024 % 251  # green starts at byte 1024
    assert image[2, 31, 31] == 3071 % 251  # blue ends the record


def test_cifar10_prefers_binary_batches_when_both_layouts_exist(tmp_path):
    batches = write_cifar_dataset(tmp_path, "bin", seed=0)
    write_cifar_dataset(tmp_path, "py", seed=100)
    train, test = load_dataset("cifar10", tmp_path)
    assert_cifar_equals(train, batches[:5])
    assert_cifar_equals(test, batches[5:])


def test_cifar10_reads_batch_files_directly_in_data_dir(tmp_path):
    batches = write_cifar_dataset(tmp_path, "py")
    train, _ = load_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    assert_cifar_equals(train, batches[:5])


def test_cifar10_protocol2_bytes_are_read_but_codecs_stay_restricted(tmp_path):
    # Python 3 writes b"" as bytes() and other bytes as _codecs.encode(text, "latin1") in
    # protocol 2; the unpickler allows exactly those spellings.
    write_cifar_dataset(tmp_path, "py", sizes=[2] * 6)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    pixels, labels = random_cifar_batch(0, 2)
    batch = {b"data": pixels, b"labels": labels, b"batch_label": b""}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    _, test = load_dataset("cifar10", tmp_path)
    assert_split_equals(test, pixels.reshape(-1, 3, 32, 32), np.array(labels), channels=3)

    path.write_bytes(pickle.dumps(batch, protocol=2).replace(b"latin1", b"rot_13"))
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, f"'{path}' is not a readable CIFAR-10 python batch", "only on text")


class RunsOnLoad:
    """Unpickling this calls ``function(argument)``: the classic pickle exploit."""

    def __init__(self, function, argument: str):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function", [os.system, builtins.exec], ids=["os.system", "exec"])
def test_cifar10_refuses_pickles_that_would_run_code(tmp_path, function):
    marker = tmp_path / "pwned"
    argument = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w').close()"
    payload = RunsOnLoad(function, argument)
    pixels, labels = random_cifar_batch(0, 2)
    write_cifar_dataset(tmp_path, "py", sizes=[2] * 6)
    batch = {b"data": pixels, b"labels": labels, b"batch_label": payload}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(batch))

    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    name = "posix.system" if function is os.system else "builtins.exec"
    assert_one_line(
        error,
        f"refusing to unpickle {name} from '{tmp_path / 'cifar-10-batches-py' / 'data_batch_3'}'",
        "only plain dicts, lists, bytes and NumPy arrays are allowed",
    )
    assert not marker.exists()
    # The payload is live: an ordinary unpickler runs it.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()


# --- errors ----------------------------------------------------------------------------------


def test_unknown_dataset_name_lists_the_allowed(tmp_path):
    with pytest.raises(UnknownNameError) as error:
        load_dataset("imagenet", tmp_path)
    assert_one_line(error, "'imagenet'", "cifar10, fashion-mnist, mnist")
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10"}


def test_data_dir_none_asks_for_data_dir():
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", None)
    assert_one_line(error, "--data-dir is required", "'fashion-mnist'")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_data_dir_is_named(tmp_path, name):
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path / "nowhere")
    assert_one_line(error, f"data directory '{tmp_path / 'nowhere'}' does not exist")


def test_empty_data_dir_says_what_was_expected(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", tmp_path)
    assert_one_line(
        error,
        f"no Fashion-MNIST in '{tmp_path}'",
        "train-images-idx3-ubyte(.gz)",
        "t10k-labels-idx1-ubyte(.gz)",
        "fashion-mnist/, FashionMNIST/raw/ or the directory itself",
    )
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, f"no CIFAR-10 in '{tmp_path}'", "cifar-10-batches-bin/")


def test_missing_file_is_named(tmp_path):
    write_idx_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, f"incomplete MNIST in '{tmp_path / 'mnist'}'", "t10k-labels-idx1-ubyte")

    write_cifar_dataset(tmp_path, "bin")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, "incomplete CIFAR-10", "missing data_batch_4.bin")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "length, expected",
    [
        (-1, "expected 5504 (16-byte header + shape (7, 28, 28))"),
        (10, "shorter than its header"),
        (2, "expected IDX magic number 0x00000803"),
    ],
)
def test_truncated_idx_is_refused(tmp_path, suffix, length, expected):
    write_idx_dataset(tmp_path, suffix="")
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()[:length]
    path.unlink()
    write(path.with_name(path.name + suffix), data)
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, f"'{path}{suffix}' is truncated: {len(data)} bytes", expected)


def test_truncated_gzip_stream_is_refused(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, f"cannot read '{path}'")


def test_wrong_magic_names_file_and_both_numbers(tmp_path):
    write_idx_dataset(tmp_path, suffix="")
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes())  # a label file where the images belong
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, f"'{images}'", "magic number 0x00000801", "expected 0x00000803")


def test_idx_label_count_and_range_are_checked(tmp_path):
    write_idx_dataset(tmp_path, suffix="")
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, "holds 7 images", f"'{labels}' 6 labels")
    labels.write_bytes(idx_bytes(np.array([0, 1, 2, 3, 4, 5, 10], np.uint8)))
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert_one_line(error, f"labels in '{labels}' span [0, 10]", "allowed: 0 .. 9")


def test_cifar_bin_length_must_be_a_multiple_of_3073(tmp_path):
    write_cifar_dataset(tmp_path, "bin")
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes() + b"\0" * 5)
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, f"'{path}' is {3 * 3073 + 5} bytes", "multiple of 3073")


@pytest.mark.parametrize(
    "batch, fragment",
    [
        ([1, 2], "holds list; expected a dict with b'data' and b'labels'"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "float32 (2, 3072)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "not a list of 2 ints"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, "span [12, 12]"),
    ],
)
def test_cifar_pickle_contents_are_checked(tmp_path, batch, fragment):
    write_cifar_dataset(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, f"'{path}'", fragment)


def test_cifar_pickle_that_is_not_a_pickle_is_refused(tmp_path):
    write_cifar_dataset(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"not a pickle\n at all")
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    assert_one_line(error, f"'{path}' is not a readable CIFAR-10 python batch")
