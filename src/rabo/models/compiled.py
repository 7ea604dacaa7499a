"""``torch.func.functional_call`` compiled by ``torch.compile`` (issue 24: the few-shot
backbone's forward and backward, ``--set problem.compile=true``).

Dynamo keeps one graph per module, input shapes and grad mode, so the five submodel widths of a
few-shot run compile in its first round (a forward and a backward graph each, per image-set
size and grad mode) and every later round reuses them; inductor also keeps them on disk, so a
later run with the same shapes compiles about 5× faster (5w1s on a loaded 2-core CPU: 95 s
against about 500 s).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import _get_current_dispatch_mode

# graphs a module may keep: shapes × grad mode (a 5-way 1-shot run: 5 widths × 3 = 15), over
# dynamo's default of 8, beyond which it would fall back to eager for good
RECOMPILE_LIMIT = 256


def _functional(module: nn.Module, params: dict[str, Tensor], args: tuple) -> Any:
    return functional_call(module, params, args)


def eager_only() -> bool:
    """Whether a ``torch.func`` transform (stacked clients' vmap) or a dispatch mode (the FLOP
    counter of a run's first round) is active: dynamo would run such a call eagerly and, for a
    mode, skip the function for good, so it is called eagerly here."""
    return (torch._C._functorch.peek_interpreter_stack() is not None
            or _get_current_dispatch_mode() is not None)


class CompiledCall:
    """``functional_call(module, params, args)``, compiled by ``backend`` (inductor) per module,
    shapes and grad mode; ``graphs`` counts the graphs compiled so far (a cache hit adds none)."""

    def __init__(self, backend: str = "inductor") -> None:
        self.graphs = 0
        compile_graph = torch._dynamo.lookup_backend(backend)

        def counted(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable:
            self.graphs += 1
            return compile_graph(graph, example_inputs)

        self._compiled = torch.compile(_functional, backend=counted, dynamic=False)

    def __call__(self, module: nn.Module, params: dict[str, Tensor], args: tuple) -> Any:
        if eager_only():
            return functional_call(module, params, args)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self._compiled(module, params, args)


@functools.cache
def shared_call() -> CompiledCall:
    """The process's compiled call, made on first use (importing dynamo takes seconds)."""
    return CompiledCall()


def compiled_call(module: nn.Module, params: dict[str, Tensor], args: tuple) -> Any:
    """``functional_call(module, params, args)`` through :func:`shared_call`."""
    return shared_call()(module, params, args)
