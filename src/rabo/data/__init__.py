"""Data: in-memory array data sets and long-tailed federated splits (SPEC §7)."""

from .digits import DIGITS_CLASSES, DIGITS_TEST_PER_CLASS, ArrayData, load_digits_arrays
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
from .readers import DATASETS as READER_DATASETS
from .readers import load_cifar10, load_dataset, load_fashion_mnist, load_mnist

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_TEST_PER_CLASS",
    "PARTITIONS",
    "READER_DATASETS",
    "ArrayData",
    "FederatedData",
    "balanced_test_split",
    "federated_longtail",
    "load_cifar10",
    "load_dataset",
    "load_digits_arrays",
    "load_fashion_mnist",
    "load_mnist",
    "longtail_counts",
    "make_longtail",
    "partition",
    "sample_batch",
    "train_val_split",
    "validation_count",
]
