"""The reference of `rabo bench`'s ``fewshot-eval`` workload (issue 24): few-shot evaluation one
test episode after another, as before :meth:`FewShot.episode_accuracies` batched it; the bench
times both on the same episodes and compares their per-episode accuracies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..problems.fewshot import Episode, FewShot
from ..submodel import Params


def loop_query_logits(problem: FewShot, x: Params, y: Params, task: Episode) -> Tensor:
    """The reference: one episode as evaluation did before batching, one backbone forward of
    its support and query sets, then its own linear head fitted alone with ``eval_steps``
    autograd steps of ``eval_lr`` on g from y; returns the query logits (Q × N). The forward
    runs with gradients enabled on a detached x (no graph is recorded) so that it pools with
    ``max_pool2d``'s kernel as before :func:`rabo.models.convnets.max_pool2` (same values)."""
    with torch.enable_grad():
        feats = problem.features({n: p.detach() for n, p in x.items()}, task)
    head = {n: p.detach().clone().requires_grad_(True) for n, p in y.items()}
    for _ in range(int(problem.opts["eval_steps"])):
        grads = torch.autograd.grad(problem.inner_loss_from(feats, head, task),
                                    list(head.values()))
        with torch.no_grad():
            for p, g in zip(head.values(), grads):
                p -= float(problem.opts["eval_lr"]) * g
    with torch.no_grad():
        return F.linear(feats[1], head["head.weight"], head["head.bias"])


def loop_accuracies(problem: FewShot, x: Params, y: Params,
                    tasks: list[Episode]) -> np.ndarray:
    """Per-episode query accuracies of :func:`loop_query_logits`, one episode after another."""
    return np.array([float((loop_query_logits(problem, x, y, t).argmax(-1)
                            == t["query_labels"]).float().mean()) for t in tasks])

