"""Plain-tensor channel plans: extract/scatter round trips and widths (docs/algorithm.md §4)."""

import math

import pytest
import torch

from rabo.errors import ConfigError, PlanError
from rabo.submodel import Axis, ChannelPlan, vector_plan, width


def _plan() -> ChannelPlan:
    return ChannelPlan({"a": 6, "b": 4}, {"w1": (Axis("a"), None), "w2": (Axis("b"), Axis("a")),
                                          "h": (None, Axis("b", repeat=3)), "v": (Axis("b"),)})


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(6, 2, generator=g), "w2": torch.randn(4, 6, generator=g),
            "h": torch.randn(5, 12, generator=g), "v": torch.randn(4, generator=g),
            "free": torch.randn(3, generator=g)}


def test_scatter_inverts_extract_and_leaves_the_rest_untouched():
    plan, theta, other = _plan(), _params(0), _params(1)
    index = {"a": torch.tensor([1, 4]), "b": torch.tensor([0, 3])}
    sub = plan.extract(theta, index)
    assert sub["w1"].shape == (2, 2) and sub["w2"].shape == (2, 2)
    assert sub["h"].shape == (5, 6) and sub["v"].shape == (2,) and sub["free"].shape == (3,)
    assert torch.equal(sub["w2"], theta["w2"][[0, 3]][:, [1, 4]])
    assert torch.equal(sub["h"], theta["h"][:, [0, 1, 2, 9, 10, 11]])
    back = plan.scatter(sub, index, other)
    for name in theta:
        mask = torch.zeros_like(theta[name], dtype=torch.bool)
        mask[plan._grid(name, theta[name].shape, index)] = True
        assert torch.equal(back[name], torch.where(mask, theta[name], other[name])), name
    assert torch.equal(back["h"][:, 3:9], other["h"][:, 3:9])


def test_scatter_add_accumulates_on_kept_coordinates():
    plan = _plan()
    total = {n: torch.zeros_like(p) for n, p in _params().items()}
    index = {"a": torch.tensor([0, 5]), "b": torch.tensor([2])}
    ones = {n: torch.ones(s) for n, s in plan.sub_shapes(
        {n: p.shape for n, p in total.items()}, index).items()}
    plan.scatter_add_(total, ones, index)
    plan.scatter_add_(total, ones, index)
    assert total["w2"][2, 0] == 2 and total["w2"][2, 5] == 2 and total["w2"].sum() == 4
    assert total["h"][:, 6:9].sum() == 2 * 15 and total["h"].sum() == 2 * 15
    assert total["free"].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("channels", [1, 5, 16, 64])
@pytest.mark.parametrize("capacity", [1, 0.5, 0.25, 0.125, 0.0625])
def test_width_is_ceil_r_c_at_least_one(channels, capacity):
    assert width(channels, capacity) == max(1, math.ceil(capacity * channels))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_width_rejects_capacity_outside_unit_interval(bad):
    with pytest.raises(ConfigError, match="outside"):
        width(8, bad)


def test_plan_naming_an_unknown_group_is_a_one_line_plan_error():
    """Regression: a hand-written plan with a misspelt group was a ValueError, not a rabo
    error (the CLI printed a traceback)."""
    with pytest.raises(PlanError) as err:
        ChannelPlan({"conv1": 8, "conv2": 16}, {"fc.weight": (None, Axis("conv3"))})
    assert str(err.value) == ("ChannelPlan: tensor 'fc.weight' follows group 'conv3', which is "
                              "not one of its groups (known: conv1, conv2)")
    with pytest.raises(PlanError, match=r"'b', which is not one of its groups \(known: none\)"):
        ChannelPlan({}, {"w": (Axis("b"),)})


def test_vector_plan_with_a_shared_group_of_two_sizes_is_a_plan_error():
    with pytest.raises(PlanError, match="group 'q' disagree on its size: 5 and 4 \\('y'\\)"):
        vector_plan({"x": torch.zeros(5), "y": torch.zeros(4)}, {"x": "q", "y": "q"})


def test_vector_plan_shares_named_groups():
    plan = vector_plan({"x": torch.zeros(5), "y": torch.zeros(5)}, {"x": "q", "y": "q"})
    assert plan.groups == {"q": 5}
    index = {"q": torch.tensor([2, 3])}
    sub = plan.extract({"x": torch.arange(5.0), "y": -torch.arange(5.0)}, index)
    assert sub["x"].tolist() == [2.0, 3.0] and sub["y"].tolist() == [-2.0, -3.0]
