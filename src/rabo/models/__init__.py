"""Width-scalable networks and their channel plans (docs/algorithm.md §4, §7).

Every model is a plain ``torch.nn.Module`` of stock layers whose ``channel_plan(prefix="")`` is
traced from one forward (:func:`trace_plan`): a :class:`~rabo.submodel.ChannelPlan` keyed by
``prefix`` + its ``named_parameters()`` names. A client runs the stock module on its genuinely
smaller tensors::

    model, plan = build_model("conv4")
    sub = plan.extract(dict(model.named_parameters()), index)
    features = torch.func.functional_call(model, sub, (images,))

Few-shot problems put a linear head y on a backbone x and merge the two plans, so the head's
input columns follow the backbone's kept channels::

    plan = merge_plans(model.channel_plan("backbone."),
                       head_plan(model.feature_axis("backbone."), model.feature_channels, "head."))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import lookup
from ..submodel import ChannelPlan
from .compiled import CompiledCall, compiled_call
from .convnets import MLP, Conv4, ConvBlock, SmallCNN
from .plans import BlockBackbone, Planned, head_plan, merge_plans, with_prefix
from .resnets import BasicBlock, ResNet12, ResNet12Block, ResNet18
from .trace import PlanError, check_plan, output_axis, trace_plan


def conv4(in_channels: int = 1, hidden: int = 64, image_size: int = 28) -> Conv4:
    """Conv-4 backbone: 64 features from 28×28 images."""
    return Conv4(in_channels, hidden, image_size)


def resnet12(in_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512)) -> ResNet12:
    """Few-shot ResNet-12 backbone: ``widths[-1]`` features."""
    return ResNet12(in_channels, widths)


def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> SmallCNN:
    """Two-conv CNN classifier for 28×28 images."""
    return SmallCNN(in_channels, num_classes, image_size)


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet18:
    """CIFAR ResNet-18 classifier."""
    return ResNet18(in_channels, num_classes)


def mlp(in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10) -> MLP:
    """MLP classifier."""
    return MLP(in_features, hidden, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "conv4": conv4,
    "resnet12": resnet12,
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "mlp": mlp,
}


def fresh_params(model: nn.Module, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Re-initialise every layer of ``model`` from ``seed`` (PyTorch's default init) and return
    detached copies of its parameters, named ``prefix`` + their module names."""
    torch.manual_seed(seed)
    for layer in model.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return {f"{prefix}{n}": p.detach().clone() for n, p in model.named_parameters()}


def rms_scaled(features: torch.Tensor, scale: float) -> torch.Tensor:
    """Each row of ``features`` rescaled to root-mean-square ``scale`` (0: unchanged). Bounds a
    linear head's curvature whatever the backbone learns: with ‖φ‖² = d·scale², λ_max of a
    softmax head's Hessian is at most ½(d·scale² + 1) + λ. A per-coordinate (not per-norm) target
    keeps a coordinate's magnitude the same in every submodel width."""
    if scale == 0:
        return features
    rms = features.pow(2).mean(1, keepdim=True).add(1e-12).sqrt()
    return features * (scale / rms)


def build_model(name: str, **kwargs) -> tuple[nn.Module, ChannelPlan]:
    """The model registered as ``name`` (built with ``kwargs``) and its channel plan."""
    model = lookup(MODELS, "model", name)(**kwargs)
    return model, model.channel_plan()


__all__ = [
    "MLP", "MODELS", "BasicBlock", "BlockBackbone", "CompiledCall", "Conv4", "ConvBlock",
    "PlanError", "Planned", "ResNet12", "ResNet12Block", "ResNet18", "SmallCNN", "build_model",
    "check_plan", "compiled_call", "conv4", "fresh_params", "head_plan", "merge_plans", "mlp",
    "output_axis", "resnet12", "resnet18", "small_cnn", "trace_plan", "with_prefix",
]
