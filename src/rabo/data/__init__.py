"""Data: in-memory array data sets and long-tailed federated splits (docs/algorithm.md §7)."""

from .digits import DIGITS_CLASSES, DIGITS_TEST_PER_CLASS, ArrayData, load_digits_arrays
from .episodes import sample_task
from .longtail import (
    PARTITIONS,
    FederatedData,
    balanced_test_split,
    federated_longtail,
    longtail_counts,
    make_longtail,
    partition,
    sample_batch,
    train_val_split,
    validation_count,
)
from .omniglot import OmniglotData, OmniglotSplit, load_omniglot, shard_classes, split_alphabets
from .readers import DATASETS as READER_DATASETS
from .readers import load_cifar10, load_dataset, load_fashion_mnist, load_mnist

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_TEST_PER_CLASS",
    "PARTITIONS",
    "READER_DATASETS",
    "ArrayData",
    "FederatedData",
    "OmniglotData",
    "OmniglotSplit",
    "balanced_test_split",
    "federated_longtail",
    "load_cifar10",
    "load_dataset",
    "load_digits_arrays",
    "load_fashion_mnist",
    "load_mnist",
    "load_omniglot",
    "longtail_counts",
    "make_longtail",
    "partition",
    "sample_batch",
    "sample_task",
    "shard_classes",
    "split_alphabets",
    "train_val_split",
    "validation_count",
]
