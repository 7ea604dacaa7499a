"""Width-scalable residual networks: the few-shot ResNet-12 and the CIFAR ResNet-18
(docs/algorithm.md §7).

A residual sum adds the block's last BN output to the shortcut channel by channel, so both
(and, for an identity shortcut, the block input) follow ONE channel group: a submodel keeps the
same channels on either side of the skip. BatchNorm uses batch statistics (no running stats).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .plans import BlockBackbone, Planned


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class ResNet12Block(nn.Module):
    """Three conv 3×3 + BN (LeakyReLU 0.1 between), a 1×1 conv + BN shortcut, the sum through
    LeakyReLU, then max-pool 2 (Lee et al. 2019, MetaOptNet; without DropBlock)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, out_channels), _bn(out_channels)
        self.conv2, self.bn2 = _conv3x3(out_channels, out_channels), _bn(out_channels)
        self.conv3, self.bn3 = _conv3x3(out_channels, out_channels), _bn(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_bn = _bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        act = nn.functional.leaky_relu
        out = act(self.bn1(self.conv1(x)), 0.1)
        out = act(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out)) + self.shortcut_bn(self.shortcut(x))
        return nn.functional.max_pool2d(act(out, 0.1), 2)


class ResNet12(BlockBackbone):
    """The few-shot ResNet-12: four ResNet12Blocks, global average pool → ``widths[-1]`` features.
    No head: the output is the feature vector."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        ins = [in_channels, *widths[:-1]]
        self.blocks = nn.Sequential(*(ResNet12Block(a, b) for a, b in zip(ins, widths)))
        self.spatial = 1  # global average pool
        self.feature_channels = widths[-1]
        self.in_channels = in_channels

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.in_channels, 16, 16)   # four max-pools of 2

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """conv 3×3 → BN → ReLU → conv 3×3 → BN, plus the input (or a 1×1 conv + BN shortcut where
    the stride or width changes), through ReLU (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, out_channels, stride), _bn(out_channels)
        self.conv2, self.bn2 = _conv3x3(out_channels, out_channels), _bn(out_channels)
        self.shortcut: nn.Conv2d | None = None
        self.shortcut_bn: nn.BatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.shortcut_bn = _bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return torch.relu(out + skip)


class ResNet18(Planned):
    """CIFAR ResNet-18: 3×3 stem (no max-pool), four stages of two BasicBlocks with widths
    64…512 (stride 2 from stage 2), global average pool, linear ``num_classes``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10,
                 widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, widths[0]), _bn(widths[0])
        ins = [widths[0], *widths[:-1]]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(BasicBlock(a, b, 1 if s == 0 else 2), BasicBlock(b, b))
            for s, (a, b) in enumerate(zip(ins, widths)))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.in_channels = in_channels

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.in_channels, 32, 32)

    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))
