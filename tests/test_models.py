"""Width-scalable models: channel plans couple dimensions so that a submodel on genuinely
smaller tensors computes exactly what the full model computes with the pruned channels zeroed
(docs/algorithm.md §4)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from rabo.errors import PlanError, UnknownNameError
from rabo.models import MODELS, BlockBackbone, build_model, head_plan, merge_plans
from rabo.submodel import Axis, ChannelPlan, width

CAPACITIES = (1.0, 0.5, 0.25, 0.125, 0.0625)
# case → (model name, builder kwargs, input shape): small batches keep float64 forwards fast
CASES = {
    "conv4": ("conv4", {}, (4, 1, 28, 28)),
    "conv4_84px": ("conv4", {"image_size": 84}, (2, 1, 84, 84)),  # 64×5×5 features
    "resnet12": ("resnet12", {}, (2, 1, 28, 28)),
    "small_cnn": ("small_cnn", {}, (4, 1, 28, 28)),
    "resnet18": ("resnet18", {}, (2, 3, 32, 32)),
    "mlp": ("mlp", {}, (4, 64)),
    "mlp_deep": ("mlp", {"hidden": (32, 16)}, (4, 64)),
}


@functools.cache
def make(case: str, seed: int = 0):
    """(model, plan, θ, inputs), built once per module: tests only read them."""
    torch.manual_seed(seed)
    name, kwargs, shape = CASES[case]
    model, plan = build_model(name, **kwargs)
    model = model.double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    inputs = torch.randn(shape, dtype=torch.float64)
    return model, plan, params, inputs


def random_index(plan: ChannelPlan, capacity: float, seed: int) -> dict[str, torch.Tensor]:
    """A uniform random subset of width(C, r) channels per group, sorted."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(c, generator=gen)[: width(c, capacity)].sort().values
            for g, c in plan.groups.items()}


def kept_mask(plan: ChannelPlan, name: str, shape: torch.Size, index) -> torch.Tensor:
    """Boolean mask of the kept coordinates of one tensor, written out independently of the
    plan's own indexing: the outer product of per-dimension masks (channel c → columns
    c·rep … c·rep+rep−1)."""
    mask = torch.ones(shape, dtype=torch.bool)
    for d, axis in enumerate(plan.axes(name, len(shape))):
        if axis is None:
            continue
        keep = torch.isin(torch.arange(shape[d]) // axis.repeat, index[axis.group])
        view = [1] * len(shape)
        view[d] = -1
        mask = mask & keep.view(view)
    return mask


def zero_pruned_outputs(plan: ChannelPlan, params, index):
    """The full model with every pruned output channel silenced: dim-0 slices (conv / linear
    weight rows and biases, BN affine weight and bias) of pruned channels set to 0."""
    out = {}
    for name, p in params.items():
        q = p.clone()
        axis = plan.axes(name, p.ndim)[0]
        if axis is not None:
            keep = torch.zeros(p.shape[0], dtype=torch.bool)
            keep[index[axis.group]] = True
            q[~keep] = 0.0
        out[name] = q
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_covers_every_parameter_and_bn_has_no_buffers(case):
    model, plan, params, _ = make(case)
    assert set(plan.dims) == set(params)
    assert list(model.buffers()) == []  # static BN: nothing to slice or calibrate
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert bn.running_mean is None and bn.running_var is None


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_scatter_inverts_extract(case, capacity):
    _, plan, params, _ = make(case)
    index = random_index(plan, capacity, seed=1)
    other = {n: torch.randn_like(p) for n, p in params.items()}
    sub = plan.extract(params, index)
    restored = plan.scatter(sub, index, other)
    for n, p in params.items():
        mask = kept_mask(plan, n, p.shape, index)
        assert sub[n].numel() == int(mask.sum())
        # θ on the kept coordinates, θ' everywhere else
        assert torch.equal(restored[n], torch.where(mask, p, other[n]))


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_submodel_forward_equals_zeroed_full_model(case, capacity):
    model, plan, params, inputs = make(case)
    index = random_index(plan, capacity, seed=2)
    sub = plan.extract(params, index)
    if capacity < 1:
        assert sum(s.numel() for s in sub.values()) < sum(p.numel() for p in params.values())
    sub_out = functional_call(model, sub, (inputs,))
    full_out = functional_call(model, zero_pruned_outputs(plan, params, index), (inputs,))
    if isinstance(model, BlockBackbone):
        axis = model.feature_axis()
        kept = plan.coords(axis, index, model.out_features)
        assert sub_out.shape == (inputs.shape[0], len(kept))
        torch.testing.assert_close(sub_out, full_out[:, kept], rtol=1e-7, atol=1e-9)
        pruned = torch.ones(model.out_features, dtype=torch.bool)
        pruned[kept] = False
        assert torch.count_nonzero(full_out[:, pruned]) == 0
        assert full_out[:, kept].abs().sum() > 0
    else:
        assert sub_out.shape == full_out.shape == (inputs.shape[0], 10)
        torch.testing.assert_close(sub_out, full_out, rtol=1e-7, atol=1e-9)


def test_fewshot_head_follows_backbone_features():
    """x = Conv-4 backbone, y = linear head: merged plan, head columns follow the last block."""
    model, _, params, inputs = make("conv4")
    plan = merge_plans(model.channel_plan("backbone."),
                       head_plan(model.feature_axis("backbone."), model.feature_channels))
    assert plan.dims["head.weight"] == (None, Axis("backbone.blocks.3.conv", 1))
    assert plan.groups["backbone.blocks.3.conv"] == 64
    torch.manual_seed(3)
    x = {f"backbone.{n}": p for n, p in params.items()}
    y = {"head.weight": torch.randn(5, 64, dtype=torch.float64),
         "head.bias": torch.randn(5, dtype=torch.float64)}
    index = random_index(plan, 0.25, seed=3)

    def logits(theta):
        backbone = {n.removeprefix("backbone."): p for n, p in theta.items() if n in x}
        features = functional_call(model, backbone, (inputs,))
        return torch.nn.functional.linear(features, theta["head.weight"], theta["head.bias"])

    sub = plan.extract({**x, **y}, index)
    assert sub["head.weight"].shape == (5, 16)
    assert sub["head.bias"].shape == (5,)
    full = zero_pruned_outputs(plan, {**x, **y}, index)
    torch.testing.assert_close(logits(sub), logits(full), rtol=1e-7, atol=1e-9)


def test_merge_plans_rejects_conflicts():
    a = ChannelPlan({"g": 4}, {"w": (Axis("g"),)})
    with pytest.raises(PlanError, match="channel group 'g' has 4 channels in one plan, 8 in"):
        merge_plans(a, ChannelPlan({"g": 8}, {}))
    with pytest.raises(PlanError, match="tensor 'w' has different axes in two plans"):
        merge_plans(a, ChannelPlan({"g": 4, "h": 2}, {"w": (Axis("h"),)}))
    assert merge_plans(a, a) == a


def test_conv4_parameter_counts_by_hand():
    _, plan, params, _ = make("conv4")
    full = (64 * 1 * 9 + 64) + 2 * 64 + 3 * ((64 * 64 * 9 + 64) + 2 * 64)
    assert full == 111_936
    assert sum(p.numel() for p in params.values()) == full
    half_index = {g: torch.arange(width(c, 0.5)) for g, c in plan.groups.items()}
    half = sum(p.numel() for p in plan.extract(params, half_index).values())
    # conv1: 32·1·9+32, bn1: 2·32, conv2..4: 32·32·9+32 each, bn2..4: 2·32 each
    assert half == (32 * 1 * 9 + 32) + 2 * 32 + 3 * ((32 * 32 * 9 + 32) + 2 * 32)
    assert half == 28_320


def test_conv4_flops_by_hand():
    """FlopCounterMode counts convolutions (2·B·Cout·Cin·k²·H·W, no bias, BN, ReLU or pooling)."""
    model, plan, params, inputs = make("conv4")
    half_index = {g: torch.arange(width(c, 0.5)) for g, c in plan.groups.items()}
    sub = plan.extract(params, half_index)
    with FlopCounterMode(display=False) as counter:
        functional_call(model, sub, (inputs,))
    B = inputs.shape[0]
    by_hand = (2 * B * 32 * 1 * 9 * 28 * 28 + 2 * B * 32 * 32 * 9 * 14 * 14
               + 2 * B * 32 * 32 * 9 * 7 * 7 + 2 * B * 32 * 32 * 9 * 3 * 3)
    assert by_hand == 20_533_248
    assert counter.get_total_flops() == by_hand


def test_resnet12_shares_one_group_across_each_skip():
    _, plan, _, _ = make("resnet12")
    d = plan.dims
    for i in range(3):
        out = d[f"blocks.{i}.conv3.weight"][0]
        assert out == Axis(f"blocks.{i}.conv3")  # named after its first producing layer
        assert d[f"blocks.{i}.shortcut.weight"][0] == out
        assert d[f"blocks.{i}.bn3.weight"] == d[f"blocks.{i}.shortcut_bn.bias"] == (out,)
        assert d[f"blocks.{i + 1}.conv1.weight"][1] == out
        assert d[f"blocks.{i + 1}.shortcut.weight"][1] == out
    assert d["blocks.0.conv1.weight"][1] is None  # input channels stay full


def test_resnet18_shares_one_group_across_each_skip():
    _, plan, _, _ = make("resnet18")
    d = plan.dims
    # stage 1: identity skips, so the stem's group runs through both blocks
    stem = d["conv1.weight"][0]
    for b in range(2):
        assert d[f"layer1.{b}.conv2.weight"][0] == stem
        assert d[f"layer1.{b}.conv1.weight"][1] == stem
    for s in (2, 3, 4):
        out = d[f"layer{s}.0.conv2.weight"][0]
        assert out == Axis(f"layer{s}.0.conv2")
        assert d[f"layer{s}.0.shortcut.weight"][0] == out
        assert d[f"layer{s}.0.shortcut_bn.weight"] == d[f"layer{s}.0.bn2.bias"] == (out,)
        assert d[f"layer{s}.1.conv1.weight"][1] == out
        assert d[f"layer{s}.1.conv2.weight"][0] == out  # identity skip in the second block
        nxt = f"layer{s + 1}.0.conv1.weight" if s < 4 else "fc.weight"
        assert d[nxt][1] == out
    assert d["conv1.weight"][1] is None and d["fc.weight"][0] is None and d["fc.bias"] == (None,)
    assert len(plan.groups) == 4 + 8  # one per stage, one per block-internal conv


def test_small_cnn_flatten_repeats_each_channel_over_49_columns():
    _, plan, params, _ = make("small_cnn")
    assert plan.dims["fc1.weight"] == (Axis("fc1"), Axis("conv2", 49))
    assert params["fc1.weight"].shape == (128, 64 * 49)
    index = plan.full_index() | {"conv2": torch.tensor([1, 3])}
    cols = plan.extract(params, index)["fc1.weight"]
    torch.testing.assert_close(cols, torch.cat([params["fc1.weight"][:, 49:98],
                                                params["fc1.weight"][:, 147:196]], dim=1))
    assert plan.dims["fc2.weight"] == (None, Axis("fc1"))


def test_unknown_model_name_raises():
    with pytest.raises(UnknownNameError, match="'vgg'.*allowed: conv4, mlp, resnet12"):
        build_model("vgg")
    assert sorted(MODELS) == ["conv4", "mlp", "resnet12", "resnet18", "small_cnn"]


def test_pooling_before_relu_is_the_textbook_block_exactly():
    """ConvBlock and SmallCNN pool before ReLU (cheaper); values and gradients equal the
    conv → BN → ReLU → pool order bit for bit."""
    from rabo.models import ConvBlock
    torch.manual_seed(0)
    block = ConvBlock(3, 8)
    images = torch.randn(6, 3, 14, 14, requires_grad=True)
    textbook = torch.nn.functional.max_pool2d(torch.relu(block.bn(block.conv(images))), 2)
    ours = block(images)
    assert torch.equal(ours, textbook)
    weights = torch.randn_like(ours)
    grads = [torch.autograd.grad((out * weights).sum(), [images, *block.parameters()])
             for out in (ours, textbook)]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_max_pool2_without_autograd_is_max_pool2d_bit_for_bit():
    """Evaluation's pooling (pairwise maxima where no gradient is recorded) gives max_pool2d's
    values exactly, on ties (Omniglot's blank regions) and odd sizes (floored) too; with
    autograd it is max_pool2d, whose backward sends a tied window's gradient to its first
    maximum only (the pairwise maximum would split it)."""
    from rabo.models.convnets import max_pool2
    torch.manual_seed(0)
    h = torch.randn(3, 4, 7, 9)
    h[:, :, :4] = 0.5  # tied windows
    with torch.no_grad():   # a maximum selects an input value, no arithmetic: exact on any CPU
        assert torch.equal(max_pool2(h), torch.nn.functional.max_pool2d(h, 2))
        assert max_pool2(h).shape == (3, 4, 3, 4)
    tied = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    (grad,) = torch.autograd.grad(max_pool2(tied).sum(), tied)
    assert grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
