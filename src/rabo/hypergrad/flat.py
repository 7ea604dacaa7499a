"""Flat vectors over parameter dicts (docs/algorithm.md §3): every estimator solves for v
and forms H u, J v on one flat vector of y (or x), in the dict's key order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..submodel import Params

MatVec = Callable[[Tensor], Tensor]
"""A product u ↦ H u on flat vectors: exact (double backward) or finite differences."""


def _cat(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in tensors])


def flatten(params: Params) -> Tensor:
    """The dict's tensors as one flat vector, in key order."""
    return _cat(params.values())


def unflatten(vec: Tensor, like: Params) -> Params:
    """Split a flat vector (or a vmapped row) back into ``like``'s names and shapes."""
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vec[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def detached(params: Params, requires_grad: bool = False) -> Params:
    """Detached copies (fresh autograd leaves if asked): no caller's graph grows."""
    return {n: p.detach().requires_grad_(requires_grad) for n, p in params.items()}


def flat_grad(output: Tensor, wrt: Iterable[Tensor], grad_output: Tensor | None = None,
              **kwargs) -> Tensor:
    """The vector-Jacobian product grad_outputᵀ ∂output/∂wrt, flat; zeros where output
    does not depend on wrt (e.g. f independent of x). A vector ``output`` (per-client
    losses of a stacked problem, whose parameters are disjoint) counts as its sum."""
    wrt = list(wrt)
    if output.dim() > 0 and grad_output is None:
        output = output.sum()
    if not output.requires_grad:
        return _cat(torch.zeros_like(p) for p in wrt)
    return _cat(torch.autograd.grad(output, wrt, grad_output, materialize_grads=True,
                                    **kwargs))
