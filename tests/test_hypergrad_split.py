"""The features split of docs/algorithm.md §3: a problem's x-only features are computed once per
hypergradient, with the same estimate as the plain losses and no more counted FLOPs; g reads
only g's data and f only f's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from rabo.hypergrad import ESTIMATORS, hypergradient
from rabo.problem import Objective, Task

OPTIONS = {"terms": 10, "step": 0.5}


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def rel_err(estimate: dict, target: dict) -> float:
    return float((flat(estimate) - flat(target)).norm() / flat(target).norm())


class ConvHead(Objective):
    """x = conv backbone (conv 3×3 1→4, batch-statistics BN, ReLU, average pool), y = linear head
    4→3; g = support CE + λ/2‖y‖², f = query CE. Plain losses only: each runs the backbone on the
    images of its own data (the task's support set for g, its query set for f)."""

    def __init__(self, seed: int = 3, lam: float = 0.2):
        torch.manual_seed(seed)
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4, track_running_stats=False),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).double()
        head = torch.nn.Linear(4, 3).double()
        self.x = {f"backbone.{n}": p.detach() for n, p in self.backbone.named_parameters()}
        self.y = {f"head.{n}": p.detach() for n, p in head.named_parameters()}
        gen = torch.Generator().manual_seed(seed)
        support = {"images": torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64),
                   "labels": torch.arange(6) % 3}
        query = {"images": torch.randn(9, 1, 8, 8, generator=gen, dtype=torch.float64),
                 "labels": torch.arange(9) % 3}
        self.task = Task((support,), query)
        self.lam = lam
        self.calls = {"features": 0, "inner_loss": 0, "outer_loss": 0}

    def _backbone(self, x, images):
        params = {n.removeprefix("backbone."): p for n, p in x.items()}
        return functional_call(self.backbone, params, (images,))

    def _inner(self, feats, y, data):
        logits = F.linear(feats, y["head.weight"], y["head.bias"])
        l2 = sum((p * p).sum() for p in y.values())
        return F.cross_entropy(logits, data["labels"]) + 0.5 * self.lam * l2

    def _outer(self, feats, y, data):
        logits = F.linear(feats, y["head.weight"], y["head.bias"])
        return F.cross_entropy(logits, data["labels"])

    def inner_loss(self, x, y, data):
        self.calls["inner_loss"] += 1
        return self._inner(self._backbone(x, data["images"]), y, data)

    def outer_loss(self, x, y, data):
        self.calls["outer_loss"] += 1
        return self._outer(self._backbone(x, data["images"]), y, data)


class ConvHeadSplit(ConvHead):
    """The same problem, split at the backbone features of each loss's images."""

    def features(self, x, data):
        self.calls["features"] += 1
        return self._backbone(x, data["images"])

    def inner_loss_from(self, feats, y, data):
        return self._inner(feats, y, data)

    def outer_loss_from(self, feats, y, data):
        return self._outer(feats, y, data)


def estimate(problem: ConvHead, name: str, **kwargs) -> dict:
    return hypergradient(problem, problem.x, problem.y, problem.task, name, **OPTIONS,
                         **kwargs)


def counted_flops(problem: ConvHead, name: str) -> tuple[int, dict]:
    with FlopCounterMode(display=False) as counter:
        estimate(problem, name)
    return counter.get_total_flops(), counter.get_flop_counts()


def test_split_losses_equal_plain_losses():
    p = ConvHeadSplit()
    (support,), query = p.task.inner, p.task.outer
    assert float(p.inner_loss_from(p.features(p.x, support), p.y, support)) \
        == float(p.inner_loss(p.x, p.y, support))
    assert float(p.outer_loss_from(p.features(p.x, query), p.y, query)) \
        == float(p.outer_loss(p.x, p.y, query))


@pytest.mark.parametrize("name,perturb", [(n, "auto") for n in ESTIMATORS] + [("fd", "x")])
def test_split_and_plain_estimates_agree(name, perturb):
    split = estimate(ConvHeadSplit(), name, perturb=perturb)
    plain = estimate(ConvHead(), name, perturb=perturb)
    assert list(split) == list(plain)
    assert rel_err(split, plain) <= 1e-9


@pytest.mark.parametrize("name", ["fd", "fd-dir"])
def test_split_fd_reaches_x_through_vmapped_features(name):
    """J v flows back through the features closed over by vmap: fd matches neumann up to O(μ²),
    and the implicit term is far from negligible."""
    p = ConvHeadSplit()
    reference = estimate(p, "neumann")
    assert rel_err(estimate(p, name), reference) <= 1e-5
    assert rel_err(estimate(p, "first-order"), reference) >= 1e-2


@pytest.mark.parametrize("name", ["neumann", "cg", "fd", "fd-dir"])
def test_split_features_are_computed_once_per_call(name):
    """Once for g's data and once for f's, whatever the number of products."""
    p = ConvHeadSplit()
    estimate(p, name)
    assert p.calls == {"features": 2, "inner_loss": 0, "outer_loss": 0}


def test_split_never_counts_more_flops_and_fd_counts_fewer():
    split = {name: counted_flops(ConvHeadSplit(), name)[0] for name in ESTIMATORS}
    plain = {name: counted_flops(ConvHead(), name)[0] for name in ESTIMATORS}
    assert all(split[name] <= plain[name] for name in ESTIMATORS), (split, plain)
    assert split["fd"] < plain["fd"] and split["fd-dir"] < plain["fd-dir"], (split, plain)
