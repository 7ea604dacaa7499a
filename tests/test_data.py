"""Long-tailed federated classification data (docs/algorithm.md §7 `losstuning`) on
scikit-learn's digits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rabo.data import (
    DIGITS_TEST_PER_CLASS,
    ArrayData,
    balanced_test_split,
    federated_longtail,
    load_digits_arrays,
    longtail_counts,
    make_longtail,
    partition,
    sample_batch,
    train_val_split,
    validation_count,
)
from rabo.errors import ConfigError, DataError, UnknownNameError

# Digits with the defaults: 50 test images per class leave the rarest class (8: 174) 124.
DIGITS_N_MAX = 124
DIGITS_LONGTAIL_RHO10 = [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]


@pytest.fixture(scope="module")
def digits():
    return load_digits_arrays()


def build(digits, seed=0, scheme="iid", alpha=0.5, num_clients=10):
    images, labels = digits
    return federated_longtail(
        images,
        labels,
        10,
        num_clients,
        rho=10,
        seed=seed,
        test_per_class=DIGITS_TEST_PER_CLASS,
        scheme=scheme,
        alpha=alpha,
    )


@pytest.fixture(scope="module")
def iid(digits):
    return build(digits)


def client_all(client):
    return np.concatenate(client)


def test_longtail_counts_match_hand_computed_list():
    expected = [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    # ⌊100·10^(−c/9)⌋: 100, 77.43, 59.95, 46.42, 35.94, 27.83, 21.54, 16.68, 12.92, 10
    assert [math.floor(100 * 10 ** (-c / 9)) for c in range(10)] == expected
    assert longtail_counts(100, 10, 10) == expected
    assert longtail_counts(DIGITS_N_MAX, 10, 10) == DIGITS_LONGTAIL_RHO10


def test_longtail_counts_edge_cases():
    assert longtail_counts(7, 4, 1) == [7, 7, 7, 7]  # ρ = 1 is balanced
    assert longtail_counts(7, 1, 10) == [7]
    assert longtail_counts(5, 3, 100) == [5, 1, 1]  # ⌊5/10⌋ = 0 and ⌊5/100⌋ = 0 become 1


def test_validation_count_rule_and_float_noise():
    assert [validation_count(n, 0.2) for n in range(1, 12)] == [0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2]
    assert validation_count(100, 0.29) == 29  # 0.29·100 = 28.999999999999996 in floats


def test_load_digits_arrays(digits):
    images, labels = digits
    assert images.shape == (1797, 64) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_clients_hold_the_longtail_counts(iid):
    union = np.concatenate([client_all(c) for c in iid.clients])
    assert iid.class_counts(union).tolist() == DIGITS_LONGTAIL_RHO10
    assert len(union) == 503


def test_digits_test_set_is_balanced_and_disjoint(iid):
    assert iid.class_counts(iid.test_idx).tolist() == [50] * 10
    union = np.concatenate([client_all(c) for c in iid.clients])
    assert np.intersect1d(union, iid.test_idx).size == 0


def test_clients_are_pairwise_disjoint_and_share_one_input_array(digits, iid):
    for a, b in itertools.combinations([client_all(c) for c in iid.clients], 2):
        assert np.intersect1d(a, b).size == 0
    for train, val in iid.clients:
        assert np.intersect1d(train, val).size == 0
    assert iid.inputs is digits[0]  # clients index into it; nothing is copied


def test_iid_client_sizes_differ_by_at_most_one(iid):
    sizes = sorted(len(client_all(c)) for c in iid.clients)
    assert sizes == [50] * 7 + [51] * 3  # 503 over 10 clients


def test_validation_is_stratified_and_about_a_fifth(iid):
    for train, val in iid.clients:
        n_train, n_val = iid.class_counts(train), iid.class_counts(val)
        n = n_train + n_val
        assert n_val.tolist() == [validation_count(int(k), 0.2) for k in n]
        assert n_val[n == 1].sum() == 0  # a class with one example stays in train
        assert 0.15 <= len(val) / n.sum() <= 0.25
    total_val = sum(len(val) for _, val in iid.clients)
    assert total_val == 98  # of 503: 19.5 %


def test_train_val_split_by_hand():
    labels = np.array([0] + [1] * 2 + [2] * 5 + [3] * 10)
    train, val = train_val_split(labels, np.arange(len(labels)), np.random.default_rng(0))
    assert np.bincount(labels[val], minlength=4).tolist() == [0, 1, 1, 2]
    assert np.bincount(labels[train], minlength=4).tolist() == [1, 1, 4, 8]


def test_dirichlet_skews_labels_and_leaves_no_client_empty(digits, iid):
    skewed = build(digits, scheme="dirichlet", alpha=0.1)
    union = np.concatenate([client_all(c) for c in skewed.clients])
    assert skewed.class_counts(union).tolist() == DIGITS_LONGTAIL_RHO10
    assert len(np.unique(union)) == len(union)

    pooled = np.array(DIGITS_LONGTAIL_RHO10) / sum(DIGITS_LONGTAIL_RHO10)

    def mean_tv(data):  # mean total-variation distance of client label histograms to the pool
        dists = []
        for client in data.clients:
            hist = data.class_counts(client_all(client))
            assert hist.sum() > 0
            dists.append(0.5 * np.abs(hist / hist.sum() - pooled).sum())
        return np.mean(dists)

    assert mean_tv(skewed) > 0.5  # 0.69 with seed 0
    assert mean_tv(iid) < 0.25  # 0.15 with seed 0


def test_same_seed_same_splits_other_seed_differs(digits, iid):
    again, other = build(digits, seed=0), build(digits, seed=1)
    for a, b in zip(iid.clients, again.clients):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(iid.test_idx, again.test_idx)
    assert not np.array_equal(iid.test_idx, other.test_idx)


def test_sample_batch(iid):
    train, _ = iid.clients[0]
    inputs, labels = sample_batch(iid, train, 8, np.random.default_rng(3))
    assert inputs.shape == (8, 64) and inputs.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    again, _ = sample_batch(iid, train, 8, np.random.default_rng(3))
    assert torch.equal(inputs, again)
    rows = {tuple(row) for row in iid.inputs[train].tolist()}
    assert all(tuple(row) in rows for row in inputs.tolist())
    everything, all_labels = sample_batch(iid, train, 10_000, np.random.default_rng(3))
    assert torch.equal(everything, torch.from_numpy(iid.inputs[train]))
    assert torch.equal(all_labels, torch.from_numpy(iid.labels[train]))


def test_sample_batch_draws_without_replacement():
    data = ArrayData(np.arange(20, dtype=np.float32)[:, None], np.zeros(20, np.int64), 1)
    inputs, _ = sample_batch(data, np.arange(5, 15), 9, np.random.default_rng(0))
    drawn = inputs[:, 0].long().tolist()
    assert len(set(drawn)) == 9 and set(drawn) <= set(range(5, 15))


def test_make_longtail_default_and_too_large_n_max():
    labels = np.repeat(np.arange(3), [10, 8, 9])
    idx = make_longtail(labels, np.arange(len(labels)), 4, np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [8, 4, 2]  # n_max = 8, ⌊8/2⌋, ⌊8/4⌋
    with pytest.raises(ConfigError, match="n_max 11"):  # class 0 has only 10
        make_longtail(labels, np.arange(len(labels)), 4, np.random.default_rng(0), n_max=11)


def test_dirichlet_that_cannot_fill_every_client_raises():
    labels = np.zeros(2, np.int64)  # one class: with tiny α both examples go to one client
    with pytest.raises(ConfigError, match="alpha 1e-06"):
        partition(labels, np.arange(2), 2, np.random.default_rng(0), "dirichlet", 1e-6)


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda L, r: longtail_counts(100, 10, 0.5), "rho 0.5"),
        (lambda L, r: make_longtail(L, np.arange(len(L)), 0.9, r), "rho 0.9"),
        (lambda L, r: partition(L, np.arange(len(L)), 0, r), "num_clients 0"),
        (lambda L, r: partition(L, np.arange(len(L)), 10_000, r), "num_clients 10000"),
        (lambda L, r: partition(L, np.arange(len(L)), 2, r, "dirichlet", 0.0), "alpha 0.0"),
        (lambda L, r: partition(L, np.arange(len(L)), 2, r, "dirichlet", -1), "alpha -1"),
        (lambda L, r: partition(L, np.arange(len(L)), 2, r, "zipf"), "'zipf'"),
        (lambda L, r: train_val_split(L, np.arange(len(L)), r, 0.0), "val_fraction 0.0"),
        (lambda L, r: train_val_split(L, np.arange(len(L)), r, 1.0), "val_fraction 1.0"),
        (lambda L, r: balanced_test_split(L, 175, r), "test_per_class 175"),
        (lambda L, r: balanced_test_split(L, 0, r), "test_per_class 0"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_value(digits, call, shown):
    with pytest.raises(ConfigError) as caught:
        call(digits[1], np.random.default_rng(0))
    message = str(caught.value)
    assert shown in message and "allowed" in message and "\n" not in message


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"rho": 0.99}, "rho 0.99"),
        ({"num_clients": 0}, "num_clients 0"),
        ({"alpha": 0}, "alpha 0"),
        ({"val_fraction": 1.5}, "val_fraction 1.5"),
        ({"scheme": "pathological"}, "'pathological'"),
    ],
)
def test_federated_longtail_rejects_bad_arguments(digits, kwargs, shown):
    images, labels = digits
    args = {"num_clients": 10, "rho": 10, "seed": 0, "test_per_class": 50} | kwargs
    with pytest.raises(ConfigError, match=shown):
        federated_longtail(images, labels, 10, **args)


def test_unknown_scheme_lists_the_allowed_ones(digits):
    with pytest.raises(UnknownNameError, match="allowed: dirichlet, iid"):
        partition(digits[1], np.arange(10), 2, np.random.default_rng(0), "zipf")


def test_array_data_rejects_mismatched_arrays():
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        ArrayData(np.zeros((3, 4)), np.zeros(2, np.int64), 2)
    with pytest.raises(DataError, match="num_classes 2"):
        ArrayData(np.zeros((2, 4)), np.array([0, 2]), 2)
