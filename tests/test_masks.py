"""Mask policies (docs/algorithm.md §4): sizes, windows, rankings, cover counts, nesting, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rabo.errors import ConfigError, UnknownNameError
from rabo.masks import POLICIES, channel_norms, make_policy
from rabo.submodel import Axis, ChannelPlan, width

CAPACITIES = [1.0, 0.5, 0.25, 0.125, 0.0625]
SIZED = ["static", "rolling", "random", "importance", "coverage", "importance-cover"]


def small_plan() -> ChannelPlan:
    """Groups a (8) and b (5): w1 produces a, w2 produces b from a, h reads b flattened ×2."""
    return ChannelPlan({"a": 8, "b": 5}, {"w1": (Axis("a"), None),
                                          "w2": (Axis("b"), Axis("a")),
                                          "h": (None, Axis("b", repeat=2))})


def small_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(8, 3, generator=g), "w2": torch.randn(5, 8, generator=g),
            "h": torch.randn(2, 10, generator=g)}


def sized_plan() -> tuple[ChannelPlan, dict[str, torch.Tensor]]:
    """Groups of 64, 5 and 1 channels in a three-layer chain."""
    plan = ChannelPlan({"wide": 64, "odd": 5, "one": 1},
                       {"l1": (Axis("wide"), None), "l2": (Axis("odd"), Axis("wide")),
                        "l3": (Axis("one"), Axis("odd")), "out": (None, Axis("one"))})
    g = torch.Generator().manual_seed(1)
    params = {"l1": torch.randn(64, 3, generator=g), "l2": torch.randn(5, 64, generator=g),
              "l3": torch.randn(1, 5, generator=g), "out": torch.randn(4, 1, generator=g)}
    return plan, params


def select(policy, plan, params, capacities, round=0, seed=0):
    return policy.select(plan, params, capacities, round, np.random.default_rng(seed))


def cover_counts(indices, group: str, channels: int) -> list[int]:
    """N^{t,j}: how many clients keep channel j of ``group``."""
    counts = torch.zeros(channels, dtype=torch.long)
    for index in indices:
        counts[index[group]] += 1
    return counts.tolist()


def param_count(plan, params, index) -> int:
    shapes = {n: p.shape for n, p in params.items()}
    return sum(math.prod(s) for s in plan.sub_shapes(shapes, index).values())


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("round", [0, 3, 70])
def test_policy_keeps_width_sorted_unique_channels(name, round):
    plan, params = sized_plan()
    indices = select(make_policy(name), plan, params, CAPACITIES, round)
    assert len(indices) == len(CAPACITIES)
    for r, index in zip(CAPACITIES, indices):
        assert set(index) == set(plan.groups)
        for g, channels in plan.groups.items():
            kept = index[g]
            assert kept.dtype == torch.int64
            assert len(kept) == width(channels, r)
            assert kept.tolist() == sorted(set(kept.tolist()))
            assert 0 <= kept.min() and kept.max() < channels
    assert [len(i["wide"]) for i in indices] == [64, 32, 16, 8, 4]
    assert [len(i["odd"]) for i in indices] == [5, 3, 2, 1, 1]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_is_deterministic_given_round_and_rng(name):
    plan, params = sized_plan()
    options = {"segments": [[[0.0, 0.5]]] * 5} if name == "segments" else {}
    policy = make_policy(name, **options)
    first = select(policy, plan, params, CAPACITIES, round=4, seed=9)
    again = select(policy, plan, params, CAPACITIES, round=4, seed=9)
    assert all(torch.equal(a[g], b[g]) for a, b in zip(first, again) for g in plan.groups)


def test_full_keeps_every_channel_whatever_the_capacity():
    plan, params = sized_plan()
    for index in select(make_policy("full"), plan, params, CAPACITIES):
        assert {g: t.tolist() for g, t in index.items()} == \
            {g: list(range(c)) for g, c in plan.groups.items()}


def test_static_keeps_the_first_channels():
    index = select(make_policy("static"), small_plan(), small_params(), [0.5])[0]
    assert index["a"].tolist() == [0, 1, 2, 3] and index["b"].tolist() == [0, 1, 2]


def test_rolling_window_moves_by_one_each_round_and_wraps():
    plan, params, rolling = small_plan(), small_params(), make_policy("rolling")

    def kept(round):
        return {g: t.tolist() for g, t in select(rolling, plan, params, [0.5], round)[0].items()}

    assert kept(0) == {"a": [0, 1, 2, 3], "b": [0, 1, 2]}
    assert kept(1) == {"a": [1, 2, 3, 4], "b": [1, 2, 3]}
    assert kept(7) == {"a": [0, 1, 2, 7], "b": [2, 3, 4]}   # a wraps: 7, 0, 1, 2
    assert kept(8) == {"a": [0, 1, 2, 3], "b": [0, 3, 4]}   # a back at 0; b starts at 8 mod 5
    assert kept(4)["b"] == [0, 1, 4]                        # b: C−1 = 4 and 0 in one window


def test_importance_keeps_largest_norm_channels_ties_to_lower_index():
    plan, params = small_plan(), small_params()
    row_norms = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1, 2.0, 0.0, 1.0])
    params["w1"] = torch.zeros(8, 3)
    params["w1"][:, 0] = row_norms
    params["w2"][:, 0] = 100.0   # a is produced by w1: w2's columns must not count for a
    params["w2"][3] *= 50.0      # b's best channel
    kept = [i["a"].tolist() for i in select(make_policy("importance"), plan, params,
                                             [0.125, 0.25, 0.375, 0.5, 0.625])]
    assert kept == [[1], [1, 3], [1, 3, 5], [1, 2, 3, 5], [1, 2, 3, 5, 7]]
    assert select(make_policy("importance"), plan, params, [0.2])[0]["b"].tolist() == [3]


def test_channel_norms_follow_the_producing_layer_else_every_reader():
    plan = ChannelPlan({"a": 2, "c": 3}, {"w": (Axis("a"), None), "bias": (Axis("a"),),
                                          "r": (Axis("a"), Axis("c", repeat=2)),
                                          "h": (None, Axis("c", repeat=2))})
    params = {"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]]), "bias": torch.tensor([4.0, 0.0]),
              "r": torch.ones(2, 6), "h": torch.arange(12.0).reshape(2, 6)}
    norms = channel_norms(plan, params)
    # a: rows of w, bias and r (dim 0); c has no producer: columns 2c, 2c+1 of r and h.
    assert norms["a"].tolist() == pytest.approx([math.sqrt(9 + 16 + 6), math.sqrt(1 + 6)])
    h = params["h"]
    expected_c = [math.sqrt(4 + (h[:, 2 * c:2 * c + 2] ** 2).sum().item()) for c in range(3)]
    assert norms["c"].tolist() == pytest.approx(expected_c)
    index = select(make_policy("importance"), plan, params, [0.5])[0]
    assert index["c"].tolist() == [1, 2]


@pytest.mark.parametrize("capacities", [CAPACITIES * 2, [0.5, 0.5], [0.25] * 4, [0.3, 0.8]])
@pytest.mark.parametrize("round", [0, 5])
def test_coverage_covers_every_channel_as_evenly_as_possible(capacities, round):
    plan, params = sized_plan()
    plans = [(plan, params), (small_plan(), small_params())]
    for plan, params in plans:
        indices = select(make_policy("coverage"), plan, params, capacities, round)
        for g, channels in plan.groups.items():
            counts = cover_counts(indices, g, channels)
            total = sum(width(channels, r) for r in capacities)
            assert min(counts) == total // channels >= 1
            assert max(counts) - min(counts) <= 1


def test_coverage_cover_counts_by_hand():
    indices = select(make_policy("coverage"), *sized_plan(), CAPACITIES * 2)
    # wide: L = 2·(64+32+16+8+4) = 248 = 3·64 + 56; the run starts at 0 and wraps 3 times
    assert cover_counts(indices, "wide", 64) == [4] * 56 + [3] * 8
    assert cover_counts(indices, "odd", 5) == [5, 5, 5, 5, 4]         # L = 2·(5+3+2+1+1) = 24
    assert cover_counts(indices, "one", 1) == [10]


def test_coverage_tiles_consecutive_windows_rotated_by_round():
    plan, params = small_plan(), small_params()
    coverage = make_policy("coverage")
    kept = [i["a"].tolist() for i in select(coverage, plan, params, [0.5, 0.25, 0.5], round=3)]
    assert kept == [[3, 4, 5, 6], [0, 7], [1, 2, 3, 4]]
    fixed = make_policy("coverage", rotate=False)
    kept = [i["a"].tolist() for i in select(fixed, plan, params, [0.5, 0.25, 0.5], round=3)]
    assert kept == [[0, 1, 2, 3], [4, 5], [0, 1, 6, 7]]


def ranked_plan(norms: list[float]) -> tuple[ChannelPlan, dict[str, torch.Tensor]]:
    """One group "a" whose channel c has weight norm ``norms[c]``."""
    plan = ChannelPlan({"a": len(norms)}, {"w": (Axis("a"), None)})
    return plan, {"w": torch.tensor(norms)[:, None] * torch.ones(1, 3)}


def test_importance_cover_counts_by_hand_on_the_paper_mix():
    plan, params = sized_plan()
    params["l1"] = torch.arange(1.0, 65.0)[:, None] * torch.ones(1, 3)   # rank p = channel 63 − p
    indices = select(make_policy("importance-cover"), plan, params, CAPACITIES * 2)
    # L = 248 = 3·64 + 56: ranks 0–55 (channels 63…8) kept by 4 clients, ranks 56–63 by 3;
    # importance would give ranks 32–63 to the two full clients only
    assert cover_counts(indices, "wide", 64) == [3] * 8 + [4] * 56
    # smallest first: 1/16 (clients 4, 9) ranks 0–3, 4–7; ⅛ (3, 8) 8–15, 16–23; ¼ (2, 7) 24–39,
    # 40–55; ½ (1, 6) 56–63 with 0–23, and 24–55; the full clients everything
    ranks = {4: range(4), 9: range(4, 8), 3: range(8, 16), 8: range(16, 24),
             2: range(24, 40), 7: range(40, 56), 1: [*range(56, 64), *range(24)],
             6: range(24, 56), 0: range(64), 5: range(64)}
    for k, kept in ranks.items():
        assert indices[k]["wide"].tolist() == sorted(63 - p for p in kept)
    # odd (5 channels): L = 2·(5+3+2+1+1) = 24 = 4·5 + 4, so by rank 5, 5, 5, 5, 4
    order = torch.sort(channel_norms(plan, params)["odd"], descending=True).indices.tolist()
    counts = cover_counts(indices, "odd", 5)
    assert [counts[c] for c in order] == [5, 5, 5, 5, 4]
    assert cover_counts(indices, "one", 1) == [10]


@pytest.mark.parametrize("capacities, kept, counts", [
    # norms 2, 4, 1, 3: ranking 1, 3, 0, 2
    ([0.5, 0.5, 0.5], [[1, 3], [0, 2], [1, 3]], [1, 2, 1, 2]),   # L = 6: by rank 2, 2, 1, 1
    ([1.0, 0.25, 0.25], [[0, 1, 2, 3], [1], [3]], [1, 2, 1, 2]),  # the ¼ clients take ranks 0, 1
    ([0.5, 0.25], [[0, 3], [1]], [1, 1, 0, 1]),                  # L = 3 < 4: the top 3 once
    ([1.0, 1.0], [[0, 1, 2, 3], [0, 1, 2, 3]], [2, 2, 2, 2]),
])
def test_importance_cover_small_cases_by_hand(capacities, kept, counts):
    plan, params = ranked_plan([2.0, 4.0, 1.0, 3.0])
    indices = select(make_policy("importance-cover"), plan, params, capacities)
    assert [i["a"].tolist() for i in indices] == kept
    assert cover_counts(indices, "a", 4) == counts
    importance = select(make_policy("importance"), plan, params, capacities)
    if capacities == [0.5, 0.5, 0.5]:          # importance: everyone ranks 0–1, nobody 2–3
        assert cover_counts(importance, "a", 4) == [0, 3, 0, 3]


@pytest.mark.parametrize("capacities", [CAPACITIES * 2, [0.5, 0.5], [0.25] * 4, [0.3, 0.8],
                                        [0.9, 0.1, 0.6, 0.35, 0.2]])
@pytest.mark.parametrize("seed", [0, 3])
def test_importance_cover_keeps_the_most_even_cover_non_increasing_down_the_ranking(
        capacities, seed):
    for plan, params in [sized_plan(), (small_plan(), small_params(seed))]:
        indices = select(make_policy("importance-cover"), plan, params, capacities)
        norms = channel_norms(plan, params)
        for g, channels in plan.groups.items():
            total = sum(width(channels, r) for r in capacities)
            q, rho = divmod(total, channels)
            order = torch.sort(norms[g], descending=True, stable=True).indices.tolist()
            counts = cover_counts(indices, g, channels)
            assert [counts[c] for c in order] == [q + 1] * rho + [q] * (channels - rho)
            assert q >= math.floor(sum(capacities) + 1e-9)
        smallest = min(range(len(capacities)), key=lambda k: capacities[k])
        top = select(make_policy("importance"), plan, params, [capacities[smallest]])[0]
        assert all(torch.equal(indices[smallest][g], top[g]) for g in plan.groups)


@pytest.mark.parametrize("name", ["static", "importance", "rolling", "fiarse", "full"])
@pytest.mark.parametrize("round", [0, 6, 63])
def test_nested_policies_give_nested_sets(name, round):
    policy = make_policy(name)
    assert policy.nested
    for plan, params in [sized_plan(), (small_plan(), small_params(round))]:
        capacities = sorted(CAPACITIES + [0.3, 0.7, 0.9])
        indices = select(policy, plan, params, capacities, round)
        for small, large in itertools.pairwise(indices):
            for g in plan.groups:
                assert set(small[g].tolist()) <= set(large[g].tolist())


def test_unnested_policies_say_so():
    assert not any(POLICIES[n].nested for n in ("random", "coverage", "segments",
                                                 "importance-cover"))


def fiarse_params():
    """a's channels all alike (scores 1), b dominated by two channels: b's tail scores ≈ 0.2."""
    params = {"w1": torch.ones(8, 3), "w2": torch.ones(5, 8), "h": torch.ones(2, 10)}
    params["w2"][0] *= 10.0
    params["w2"][1] *= 5.0
    return params


@pytest.mark.parametrize("r", [0.4, 0.5, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_fiarse_keeps_r_squared_of_the_parameters(r, seed):
    plan = small_plan()
    params = fiarse_params() if seed is None else small_params(seed)
    index = select(make_policy("fiarse"), plan, params, [r])[0]
    total = param_count(plan, params, plan.full_index())
    assert total == 24 + 40 + 20
    # one channel of a holds 3 + |b| ≤ 8 parameters, one of b |a| + 2 ≤ 10
    assert abs(param_count(plan, params, index) - r * r * total) <= 10


def test_fiarse_widths_follow_importance_across_groups():
    plan, params = small_plan(), fiarse_params()
    index = select(make_policy("fiarse"), plan, params, [0.5])[0]
    assert plan.widths(0.5) == {"a": 4, "b": 3}
    assert {g: t.tolist() for g, t in index.items()} == {"a": [0, 1, 2, 3], "b": [0]}
    index = select(make_policy("fiarse"), plan, params, [0.75])[0]
    assert {g: len(t) for g, t in index.items()} == {"a": 8, "b": 2}   # uniform: a 6, b 4


def test_fiarse_width_budget_matches_the_uniform_submodel_size():
    plan, params = small_plan(), small_params(3)
    uniform = select(make_policy("static"), plan, params, [0.5])[0]
    assert param_count(plan, params, uniform) == 4 * 3 + 3 * 4 + 2 * 3 * 2
    index = select(make_policy("fiarse", budget="width"), plan, params, [0.5])[0]
    assert abs(param_count(plan, params, index) - param_count(plan, params, uniform)) <= 10


def test_fiarse_at_full_capacity_keeps_everything():
    plan, params = small_plan(), small_params()
    index = select(make_policy("fiarse"), plan, params, [1.0])[0]
    assert {g: t.tolist() for g, t in index.items()} == {"a": list(range(8)), "b": list(range(5))}


SEGMENTS = [[[0.0, 0.5]], [[0.5, 1.0]], [[0.0, 0.25], [0.75, 1.0]]]


def test_segments_keep_exactly_the_configured_channels():
    plan, params = small_plan(), small_params()
    indices = select(make_policy("segments", segments=SEGMENTS), plan, params, [1.0, 0.5, 0.1])
    assert [i["a"].tolist() for i in indices] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 6, 7]]
    # b (C = 5): [0, ⌈2.5⌉) ; [⌊2.5⌋, 5) ; [0, ⌈1.25⌉) ∪ [⌊3.75⌋, 5)
    assert [i["b"].tolist() for i in indices] == [[0, 1, 2], [2, 3, 4], [0, 1, 3, 4]]
    assert cover_counts(indices, "a", 8) == [2, 2, 1, 1, 1, 1, 2, 2]
    assert cover_counts(indices, "b", 5) == [2, 2, 2, 2, 2]


def test_random_is_reproducible_and_fresh_each_round():
    plan, params = sized_plan()
    policy = make_policy("random")
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    round0 = policy.select(plan, params, [0.5, 0.5], 0, rng_a)
    assert all(torch.equal(x["wide"], y["wide"])
               for x, y in zip(round0, policy.select(plan, params, [0.5, 0.5], 0, rng_b)))
    round1 = policy.select(plan, params, [0.5, 0.5], 1, rng_a)
    assert not torch.equal(round0[0]["wide"], round1[0]["wide"])
    assert not torch.equal(round0[0]["wide"], round0[1]["wide"])


def test_unknown_policy_name_lists_the_allowed_ones():
    with pytest.raises(UnknownNameError, match="unknown policy 'nope'; allowed: coverage, fiarse"):
        make_policy("nope")


@pytest.mark.parametrize("name, options, message", [
    ("static", {"foo": 1}, "unknown static policy option 'foo'; allowed: (none)"),
    ("coverage", {"rotat": True}, "unknown coverage policy option 'rotat'; allowed: rotate"),
    ("coverage", {"rotate": "yes"}, "rotate='yes'"),
    ("fiarse", {"budget": "cube"}, "budget='cube'; allowed: square, width"),
    ("segments", {}, "needs option 'segments'"),
    ("segments", {"segments": [[[0.0, 1.5]]]}, "segments[0][0]=[0.0, 1.5]"),
    ("segments", {"segments": [[[0.0, 0.5]], [[0.6, 0.4]]]}, "segments[1][0]=[0.6, 0.4]"),
    ("segments", {"segments": [[[-0.1, 0.4]]]}, "-0.1"),
    ("segments", {"segments": [[0.0, 0.5]]}, "segments[0][0]=0.0"),
    ("segments", {"segments": "0:0.5"}, "segments='0:0.5'"),
])
def test_bad_options_raise_config_errors_naming_the_value(name, options, message):
    with pytest.raises(ConfigError) as err:
        make_policy(name, **options)
    assert message in str(err.value)


def test_segments_count_must_match_the_clients():
    policy = make_policy("segments", segments=SEGMENTS)
    with pytest.raises(ConfigError, match="3 client entries but 2 clients"):
        select(policy, small_plan(), small_params(), [0.5, 0.5])


def test_capacity_outside_unit_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="1.5"):
        select(make_policy("static"), small_plan(), small_params(), [1.5])
