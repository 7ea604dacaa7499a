"""Plain width-scalable networks: Conv-4 (few-shot backbone), a small CNN and an MLP
(docs/algorithm.md §7).

BatchNorm keeps no running statistics (HeteroFL's static BN): it always normalises with the
batch's own statistics, so a submodel needs no calibration and has no buffers to slice.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .plans import BlockBackbone, Planned


class ConvBlock(nn.Module):
    """conv 3×3 (pad 1) → BN → ReLU → max-pool 2. ReLU is applied after the pooling: max-pool
    and ReLU commute exactly (ReLU is monotone), and ReLU then touches a quarter of the values."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(max_pool2(self.bn(self.conv(x))))



class Conv4(BlockBackbone):
    """The standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017): four ConvBlocks,
    flattened; 64 features from 28×28 input. No head: the output is the feature vector."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28):
        super().__init__()
        self.blocks = nn.Sequential(*(ConvBlock(in_channels if i == 0 else hidden, hidden)
                                      for i in range(4)))
        self.spatial = _pooled(image_size, 4) ** 2
        self.feature_channels = hidden
        self.input_shape = (in_channels, image_size, image_size)

    def example_input(self) -> Tensor:
        return torch.zeros(2, *self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)


class SmallCNN(Planned):
    """conv 32 → ReLU → pool → conv 64 → ReLU → pool → flatten (64·7·7 from 28×28) → linear 128 →
    ReLU → linear ``num_classes``: the MNIST / Fashion-MNIST classifier of loss tuning."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 channels: tuple[int, int] = (32, 64), hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.spatial = _pooled(image_size, 2) ** 2
        self.fc1 = nn.Linear(channels[1] * self.spatial, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def example_input(self) -> Tensor:
        return torch.zeros(2, *self.input_shape)

    def forward(self, x: Tensor) -> Tensor:  # pool before ReLU: they commute (see ConvBlock)
        x = torch.relu(nn.functional.max_pool2d(self.conv1(x), 2))
        x = torch.relu(nn.functional.max_pool2d(self.conv2(x), 2))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MLP(Planned):
    """Linear → ReLU → … → linear ``num_classes`` (scikit-learn digits: 64 inputs)."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128,),
                 num_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.layers[0].in_features)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def max_pool2(h: Tensor) -> Tensor:
    """2×2 max-pool of stride 2 (odd sizes floored). Where no gradient is recorded, the maximum
    of row pairs, then of column pairs: the same values (a maximum is exact) at a fraction of the
    cost of the channels-first CPU kernel (3.9 against 85 ms at 95 × 64 × 28 × 28, 1 thread),
    which took 40 % of an evaluation's Conv-4 forward. With autograd, ``max_pool2d`` itself: its
    backward gives a tied window's gradient to the first maximum, the pairwise one would split
    it (Omniglot's blank regions tie)."""
    if torch.is_grad_enabled():
        return nn.functional.max_pool2d(h, 2)
    h = h[..., : h.shape[-2] // 2 * 2, : h.shape[-1] // 2 * 2]
    rows = torch.maximum(h[..., 0::2, :], h[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _pooled(size: int, times: int) -> int:
    """Side of a size×size map after ``times`` max-pools of 2 (padded 3×3 convs keep the size)."""
    for _ in range(times):
        size //= 2
    return size
