"""The compiled backbone call (issue 24, ``problem.compile``): one graph per width and grad
mode, reused in later rounds, and the same features and gradients as eager to float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from rabo.models import CompiledCall, Conv4
from rabo.problems.fewshot import FewShot
from rabo.problems.fewshot_data import synthetic_task


def conv4_at(width: int) -> dict[str, torch.Tensor]:
    """A Conv-4 submodel's parameters at ``width`` channels (one seeded draw)."""
    torch.manual_seed(width)
    return {n: p.detach() for n, p in Conv4(hidden=width).named_parameters()}


def test_compiled_call_compiles_each_width_once_and_reuses_it() -> None:
    """Widths 8 and 4, three "rounds" each with and without autograd: 2 widths × 2 grad modes
    = 4 graphs in the first round, none after (dynamo's cache is hit), and the features equal
    eager's (the eager backend runs the same ops)."""
    call, module = CompiledCall(backend="eager"), Conv4()
    images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    counts = []
    for _ in range(3):
        for width in (8, 4):
            params = conv4_at(width)
            for grad in (True, False):
                with torch.set_grad_enabled(grad):
                    out = call(module, params, (images,))
                    ref = functional_call(module, params, (images,))
                assert out.shape == (6, width)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        counts.append(call.graphs)
    assert counts == [4, 4, 4]


def test_compiled_call_is_eager_under_vmap() -> None:
    """Stacked clients vmap the features: the compiled call runs them eagerly, compiles
    nothing and gives each client's own features."""
    call, module = CompiledCall(backend="eager"), Conv4()
    params = conv4_at(4)
    stacked = {n: torch.stack([p, 2 * p]) for n, p in params.items()}
    images = torch.randn(2, 3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = torch.func.vmap(lambda p, x: call(module, p, (x,)))(stacked, images)
        ref = functional_call(module, {n: p[1] for n, p in stacked.items()}, (images[1],))
    torch.testing.assert_close(out[1], ref, rtol=1e-5, atol=1e-6)
    assert call.graphs == 0


def test_compiled_call_counted_first_still_compiles_after() -> None:
    """A run counts its first round's FLOPs under a dispatch mode: that call runs eagerly (and
    is counted: 2·9·C_in·C_out·H·W per convolution), and the next call compiles (dynamo, called
    under the mode, had skipped the function for good: no graph in any later round)."""
    call, module = CompiledCall(backend="eager"), Conv4()
    params, images = conv4_at(4), torch.zeros(1, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        call(module, params, (images,))
    convs = 2 * 9 * (1 * 4 * 28 ** 2 + 4 * 4 * (14 ** 2 + 7 ** 2 + 3 ** 2))
    assert counter.get_total_flops() == convs
    call(module, params, (images,))
    assert call.graphs == 1


def test_compile_option_is_written_only_when_on() -> None:
    """config.json of a run without compile is byte-identical to before the option existed."""
    off = FewShot(clients=1, source="synthetic").config()
    on = FewShot(clients=1, source="synthetic", compile=True).config()
    assert "compile" not in off
    assert on == {**off, "compile": True}


@pytest.mark.slow
def test_compiled_fewshot_loss_and_gradient_equal_eager() -> None:
    """Inductor-compiled Conv-4 (full width, a 5-way 1-shot query set, float64): the outer loss
    and its gradient in every backbone weight equal eager's to 1e-9 of the largest entry
    (reassociated sums: not bit for bit). In float32 the features differ by ~1e-6, which can
    flip a pooling window's maximum between two near-equal values and move that window's
    gradient (measured: 1 % of the largest entry, eager float32 against float64 alike), so the
    gradients are compared where rounding cannot flip one."""
    task = {n: t.double() if t.is_floating_point() else t
            for n, t in synthetic_task(np.random.default_rng(0), 5, 1, 19, 28).items()}
    results = []
    for compile in (False, True):
        problem = FewShot(clients=1, source="synthetic", compile=compile)
        x, y = problem.init_params(0)
        y = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64) for n, p in y.items()}
        x = {n: p.double().requires_grad_(True) for n, p in x.items()}
        loss = problem.outer_loss(x, y, task)
        results.append((loss, torch.autograd.grad(loss, list(x.values()))))
    (eager_loss, eager), (compiled_loss, compiled) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0)
    scale = max(float(g.abs().max()) for g in eager)
    worst = max(float((a - b).abs().max()) for a, b in zip(compiled, eager))
    assert worst <= 1e-9 * scale
