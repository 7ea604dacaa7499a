"""Traced channel plans (trace_plan) against plans written out by hand, and plan checks
(check_plan) that refuse wrong plans with one line (docs/algorithm.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rabo.models import PlanError, build_model, check_plan, output_axis, trace_plan
from rabo.submodel import Axis, ChannelPlan


def by_hand(groups: dict[str, int], members: dict[str, list[tuple[str, int, int]]],
            params: dict[str, torch.Tensor]) -> ChannelPlan:
    """A plan written out by hand: ``members[group]`` lists (tensor, dim, repeat); every other
    dimension of every parameter stays full."""
    axes = {n: [None] * p.ndim for n, p in params.items()}
    for g, dims in members.items():
        for name, d, repeat in dims:
            assert axes[name][d] is None, (name, d)
            axes[name][d] = Axis(g, repeat)
    return ChannelPlan(groups, {n: tuple(a) for n, a in axes.items()})


def layer(name: str, out: bool = True, bias: bool = True, norm: str | None = None):
    """The (tensor, dim, 1) entries a conv/linear layer's output channels own (+ its norm)."""
    dims = [(f"{name}.weight", 0, 1)] + ([(f"{name}.bias", 0, 1)] if bias else [])
    if norm:
        dims += [(f"{norm}.weight", 0, 1), (f"{norm}.bias", 0, 1)]
    return dims if out else []


def expected(case: str, params: dict[str, torch.Tensor]) -> ChannelPlan:
    """The hand-written plans rabo's models had before plans were traced."""
    g: dict[str, int] = {}
    m: dict[str, list] = {}
    if case == "conv4":
        for i in range(4):
            g[f"blocks.{i}.conv"] = 64
            m[f"blocks.{i}.conv"] = layer(f"blocks.{i}.conv", norm=f"blocks.{i}.bn") + (
                [(f"blocks.{i + 1}.conv.weight", 1, 1)] if i < 3 else [])
    elif case == "small_cnn":
        g = {"conv1": 32, "conv2": 64, "fc1": 128}
        m = {"conv1": layer("conv1") + [("conv2.weight", 1, 1)],
             "conv2": layer("conv2") + [("fc1.weight", 1, 49)],
             "fc1": layer("fc1") + [("fc2.weight", 1, 1)]}
    elif case == "mlp":
        g = {"layers.0": 32, "layers.1": 16}
        m = {"layers.0": layer("layers.0") + [("layers.1.weight", 1, 1)],
             "layers.1": layer("layers.1") + [("layers.2.weight", 1, 1)]}
    elif case == "resnet12":
        for i, c in enumerate((64, 128, 256, 512)):
            b = f"blocks.{i}"
            g |= {f"{b}.conv1": c, f"{b}.conv2": c, f"{b}.conv3": c}
            m[f"{b}.conv1"] = layer(f"{b}.conv1", bias=False, norm=f"{b}.bn1") + [
                (f"{b}.conv2.weight", 1, 1)]
            m[f"{b}.conv2"] = layer(f"{b}.conv2", bias=False, norm=f"{b}.bn2") + [
                (f"{b}.conv3.weight", 1, 1)]
            m[f"{b}.conv3"] = (layer(f"{b}.conv3", bias=False, norm=f"{b}.bn3")
                               + layer(f"{b}.shortcut", bias=False, norm=f"{b}.shortcut_bn")
                               + ([(f"blocks.{i + 1}.conv1.weight", 1, 1),
                                   (f"blocks.{i + 1}.shortcut.weight", 1, 1)] if i < 3 else []))
    elif case == "resnet18":
        # the stem's group runs through stage 1 (identity skips); each later stage's first
        # block opens a group shared by its conv2, its shortcut and the stage's second block
        g["conv1"] = 64
        m["conv1"] = layer("conv1", bias=False, norm="bn1")
        skip, skip_width = "conv1", 64
        for s, c in enumerate((64, 128, 256, 512), start=1):
            for b in range(2):
                blk = f"layer{s}.{b}"
                g[f"{blk}.conv1"] = c
                m[f"{blk}.conv1"] = layer(f"{blk}.conv1", bias=False, norm=f"{blk}.bn1") + [
                    (f"{blk}.conv2.weight", 1, 1)]
                m[skip].append((f"{blk}.conv1.weight", 1, 1))
                if c != skip_width:       # a shortcut conv: a new group for the block output
                    skip, skip_width = f"{blk}.conv2", c
                    g[skip] = c
                    m[skip] = layer(f"{blk}.shortcut", bias=False, norm=f"{blk}.shortcut_bn")
                    m["conv1" if s == 2 else f"layer{s - 1}.0.conv2"].append(
                        (f"{blk}.shortcut.weight", 1, 1))
                m[skip] += layer(f"{blk}.conv2", bias=False, norm=f"{blk}.bn2")
        m[skip].append(("fc.weight", 1, 1))
    return by_hand(g, m, params)


CASES = {"conv4": ({}, (2, 1, 28, 28), False), "resnet12": ({}, (2, 1, 16, 16), False),
         "small_cnn": ({}, (2, 1, 28, 28), True), "resnet18": ({}, (2, 3, 32, 32), True),
         "mlp": ({"hidden": (32, 16)}, (2, 64), True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_traced_plan_equals_the_hand_written_one(case):
    kwargs, shape, full = CASES[case]
    model, plan = build_model(case, **kwargs)
    params = dict(model.named_parameters())
    want = expected(case, params)
    assert trace_plan(model, torch.zeros(shape), full_outputs=full) == want
    assert plan == want                      # the model's own plan is the traced one
    if not full:
        assert output_axis(model, torch.zeros(shape)) == model.feature_axis()


class Residual(nn.Module):
    """A user's residual block, written without rabo in mind: conv-BN-ReLU-conv-BN plus the
    input (identity skip), or plus a 1×1 conv + BN shortcut when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.n1 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.n2 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.proj = None if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout, track_running_stats=False))

    def forward(self, x):
        h = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
        return torch.relu(h + (x if self.proj is None else self.proj(x)))


class UserNet(nn.Module):
    """Stem, two residual blocks (identity, then projection), a pointwise and a depthwise
    conv, pool, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1, self.block2 = Residual(8, 8), Residual(8, 16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.head(torch.flatten(self.pool(torch.relu(self.dw(self.pw(x)))), 1))


def user_net():
    torch.manual_seed(0)
    return UserNet().double(), torch.randn(3, 3, 8, 8, dtype=torch.float64)


def test_a_user_residual_cnn_couples_each_skip_and_keeps_inner_convs_apart():
    model, x = user_net()
    # never pruned: pw.bias 12, dw 108 + 12, head 60 + 5 = 197 of 5,541 (stem 224, block1
    # 1,200, block2 3,728, pw 204, dw 120, head 65)
    with pytest.warns(UserWarning, match=r"depthwise layer\(s\) dw stay full.*197 of 5541 "):
        plan = trace_plan(model, x)
    d = plan.dims
    stem = d["stem.weight"][0]
    # identity skip: block1's output conv and its BN follow the stem's group, its inner conv not
    assert d["block1.c2.weight"][0] == d["block1.n2.bias"][0] == stem
    assert d["block1.c1.weight"][0] != stem and d["block1.c1.weight"][1] == stem
    assert d["block1.n1.weight"][0] == d["block1.c1.weight"][0] == d["block1.c2.weight"][1]
    # projection skip: both branches and the BNs on them are one new group
    out = d["block2.c2.weight"][0]
    assert out not in (stem, None) and d["block2.proj.0.weight"][0] == out
    assert d["block2.proj.1.weight"][0] == d["block2.n2.weight"][0] == out
    assert d["block2.proj.0.weight"][1] == d["block2.c1.weight"][1] == stem
    assert d["pw.weight"][1] == out and d["stem.weight"][1] is None
    # a depthwise layer's `groups` is fixed, so the channels through it (pw's output, dw, the
    # head's input columns) stay full; class outputs too
    assert d["pw.weight"][0] is None and d["dw.weight"] == (None,) * 4
    assert d["head.weight"] == (None, None) and d["head.bias"] == (None,)
    check_plan(model, plan, x)


def test_check_plan_accepts_conv4s_own_plan_whatever_the_input():
    """Regression: compared elementwise (rtol 1e-5, atol 1e-6), check_plan refused Conv-4's
    right plan on some random inputs (6 of 40): the sliced and the zeroed forward round
    differently, by up to 1.4e-6 of the output's scale, more than that near zero outputs."""
    torch.manual_seed(0)
    model, plan = build_model("conv4")
    gen = torch.Generator().manual_seed(0)
    for seed in range(12):
        check_plan(model, plan, torch.randn(2, 1, 28, 28, generator=gen), seed=seed,
                   capacities=(0.5, 0.25, 0.125, 0.0625), output=model.feature_axis())


def test_check_plan_refuses_a_residual_branch_in_its_own_group():
    model, x = user_net()
    with pytest.warns(UserWarning, match="depthwise"):
        plan = trace_plan(model, x)
    out = plan.dims["block2.c2.weight"][0]
    dims = dict(plan.dims)
    for name in ("block2.proj.0.weight", "block2.proj.0.bias", "block2.proj.1.weight",
                 "block2.proj.1.bias"):
        dims[name] = (Axis("own"),) + dims[name][1:]
    wrong = ChannelPlan(plan.groups | {"own": plan.groups[out.group]}, dims)
    with pytest.raises(PlanError) as err:
        check_plan(model, wrong, x)
    message = str(err.value)
    assert "\n" not in message and ("'own'" in message or repr(out.group) in message)


def test_check_plan_refuses_an_mlp_input_coupled_to_the_wrong_group():
    model, plan = build_model("mlp", hidden=(32, 32))
    x = torch.randn(4, 64)
    check_plan(model, plan, x)
    dims = dict(plan.dims) | {"layers.1.weight": (Axis("layers.1"), Axis("layers.1"))}
    with pytest.raises(PlanError, match="group 'layers.0'"):
        check_plan(model, ChannelPlan(plan.groups, dims), x)


def test_check_plan_names_a_size_mismatch_and_running_statistics():
    model, plan = build_model("mlp", hidden=(32,))
    wrong = ChannelPlan({"layers.0": 16}, plan.dims)
    with pytest.raises(PlanError, match="'layers.0.weight' dim 0 has size 32.*'layers.0' has 16"):
        check_plan(model, wrong, torch.randn(2, 64))
    extra = ChannelPlan(plan.groups, plan.dims | {"layers.1.weight": (None, None, None)})
    with pytest.raises(PlanError, match="'layers.1.weight' 3 axes, but it has 2 dimensions"):
        check_plan(model, extra, torch.randn(2, 64))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(PlanError, match="BatchNorm '1' keeps running statistics"):
        trace_plan(net, torch.randn(2, 1, 3, 3))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_an_unsupported_op_is_one_line_naming_it():
    with pytest.raises(PlanError, match=r"^Concat: node 'cat': operation 'cat' is not supported") \
            as err:
        trace_plan(Concat(), torch.randn(2, 1, 4, 4))
    assert "\n" not in str(err.value)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(PlanError, match="groups=2.*blocks 0.weight"):
        trace_plan(grouped, torch.randn(2, 4, 5, 5))
