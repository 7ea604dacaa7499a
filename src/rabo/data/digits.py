"""Array data sets held in memory, and scikit-learn's bundled digits: the loss-tuning problem's
embedded default (docs/algorithm.md §7 `losstuning`), which needs no files and no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

DIGITS_CLASSES = 10
DIGITS_TEST_PER_CLASS = 50
"""Balanced test set for digits: 50 per class (500 in all); the rarest class (8, 174 images)
then leaves 124 for training, so ``make_longtail``'s default n_max is 124."""


@dataclass
class ArrayData:
    """Inputs (N, ...) and integer labels (N,) in ``range(num_classes)``, held in memory."""

    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        self.inputs = np.asarray(self.inputs)  # never copied: clients index into it
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
            raise DataError(
                f"labels of shape {self.labels.shape} and dtype {self.labels.dtype}; "
                "allowed: a 1-d integer array"
            )
        if len(self.inputs) != len(self.labels):
            raise DataError(
                f"{len(self.inputs)} inputs but {len(self.labels)} labels; they must match"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(
                f"labels span [{self.labels.min()}, {self.labels.max()}]; "
                f"allowed: 0 .. {self.num_classes - 1} (num_classes {self.num_classes})"
            )

    def class_counts(self, idx: np.ndarray) -> np.ndarray:
        """Examples per class among ``idx``: an int array of length ``num_classes``."""
        return np.bincount(self.labels[idx], minlength=self.num_classes)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8×8 digits as float32 (N, 64) in [0, 1] and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)  # pixel values are 0..16
    return images, digits.target.astype(np.int64)
