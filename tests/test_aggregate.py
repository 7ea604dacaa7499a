"""Parameter-wise aggregation against a hand-computed case (eqs 6, 8; docs/algorithm.md §2 step
8)."""

import pytest
import torch

from rabo.server import aggregate, cover_stats
from rabo.submodel import Axis, ChannelPlan


def test_three_overlapping_clients_against_hand_computation():
    plan = ChannelPlan({"g": 4}, {"v": (Axis("g"),), "m": (None, Axis("g"))})
    params = {"v": torch.tensor([10.0, 20.0, 30.0, 40.0]),
              "m": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])}
    indices = [{"g": torch.tensor([0, 1])}, {"g": torch.tensor([1, 2])},
               {"g": torch.tensor([0, 2])}]
    deltas = [{"v": torch.tensor([1.0, 2.0]), "m": torch.tensor([[1.0, 1.0], [2.0, 2.0]])},
              {"v": torch.tensor([4.0, 6.0]), "m": torch.tensor([[3.0, 3.0], [0.0, 0.0]])},
              {"v": torch.tensor([3.0, 8.0]), "m": torch.tensor([[5.0, 5.0], [4.0, 4.0]])}]
    new, count = aggregate(plan, params, indices, deltas, gamma=1.0)
    # coordinate 0: clients 1, 3 -> mean(1, 3) = 2; 1: clients 1, 2 -> mean(2, 4) = 3;
    # 2: clients 2, 3 -> mean(6, 8) = 7; 3: nobody -> unchanged.
    assert new["v"].tolist() == [8.0, 17.0, 23.0, 40.0]
    assert new["m"].tolist() == [[1.0 - 3.0, 2.0 - 2.0, 3.0 - 4.0, 4.0],
                                 [5.0 - 3.0, 6.0 - 1.0, 7.0 - 2.0, 8.0]]
    assert count["v"].tolist() == [2, 2, 2, 0]
    assert count["m"].tolist() == [[2, 2, 2, 0], [2, 2, 2, 0]]
    stats = cover_stats(count)
    assert stats.minimum == 0 and stats.uncovered == pytest.approx(3 / 12)


def test_gamma_scales_the_mean_update_and_full_cover_counts_clients():
    plan = ChannelPlan({"g": 2}, {"v": (Axis("g"),)})
    full = {"g": torch.tensor([0, 1])}
    new, count = aggregate(plan, {"v": torch.zeros(2)}, [full, full, {"g": torch.tensor([1])}],
                           [{"v": torch.tensor([1.0, 1.0])}, {"v": torch.tensor([3.0, 3.0])},
                            {"v": torch.tensor([8.0])}], gamma=0.5)
    assert new["v"].tolist() == [-0.5 * 2.0, -0.5 * 4.0]
    assert cover_stats(count).minimum == 2 and cover_stats(count).uncovered == 0.0


def test_channel_cover_counts_clients_per_channel_of_the_groups_the_tensors_follow():
    from rabo.server import channel_cover

    plan = ChannelPlan({"a": 4, "b": 2, "c": 3}, {"w": (Axis("a"), None),
                                                  "v": (Axis("b"), Axis("a", repeat=2)),
                                                  "u": (Axis("c"),)})
    indices = [{"a": torch.tensor([0, 1]), "b": torch.tensor([0]), "c": torch.tensor([0])},
               {"a": torch.tensor([1, 2, 3]), "b": torch.tensor([0, 1]), "c": torch.tensor([0])}]
    # a: 1, 2, 1, 1 and b: 2, 1 (c, which neither w nor v follows, would add zeros)
    fewest, mean = channel_cover(plan, ["w", "v", "h"], indices)
    assert fewest == 1 and mean == pytest.approx(8 / 6)
    assert channel_cover(plan, ["u"], indices) == (0, pytest.approx(2 / 3))   # c: 2, 0, 0
    assert channel_cover(plan, ["w"], []) == (0, 0.0)
    assert channel_cover(plan, ["h"], indices) == (None, None)    # h is never pruned
