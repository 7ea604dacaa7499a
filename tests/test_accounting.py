"""FLOP and byte counts against arithmetic (docs/algorithm.md §6)."""

import torch

from rabo.accounting import FlopCache, index_bytes, nbytes
from rabo.submodel import ChannelPlan


def test_linear_forward_counts_two_b_in_out_and_is_cached():
    layer = torch.nn.Linear(7, 5)
    cache = FlopCache()
    x = torch.randn(3, 7)
    out, flops = cache.run(("fwd", 3), lambda: layer(x))
    assert flops == 2 * 3 * 7 * 5
    calls = []
    out2, flops2 = cache.run(("fwd", 3), lambda: calls.append(1) or layer(x))
    assert flops2 == flops and calls == [1] and torch.equal(out, out2)


def test_forward_and_backward_of_linear():
    layer = torch.nn.Linear(4, 6, bias=False)
    x = torch.randn(8, 4, requires_grad=True)
    _, flops = FlopCache().run("fb", lambda: layer(x).sum().backward())
    # forward 2·B·in·out, backward: grad wrt input and wrt weight, each 2·B·in·out
    assert flops == 3 * 2 * 8 * 4 * 6


def test_bytes_are_element_counts_times_itemsize():
    params = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float64)}
    assert nbytes(params) == 12 * 4 + 5 * 8
    plan = ChannelPlan({"g": 8, "h": 3}, {})
    assert index_bytes(plan, {"g": torch.arange(2), "h": torch.arange(3)}) == 2 * 4
