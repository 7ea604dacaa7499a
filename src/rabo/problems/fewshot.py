"""Few-shot hyper-representation learning (paper V-A, SPEC §7 `fewshot`): episodic bilevel.

x = backbone (Conv-4 by default), y = linear head initialisation (N × d + bias) with L2 λ.
For a task τ with support S and query Q: g = CE(head_y(φ_x(S))) + λ/2‖y‖²,
f = CE(head_y(φ_x(Q))). Each client's meta-batch holds several N-way K-shot tasks; x and y
share one channel plan, so the head's input columns follow the backbone's kept channels.

Episodes come from an episode source: ``synthetic`` (random images of the right shapes, for
cost accounting and tests; accuracy is meaningless there).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..errors import ConfigError, UnknownNameError
from ..models import MODELS, head_plan, merge_plans
from ..problem import BilevelProblem
from ..submodel import ChannelPlan, Params

BACKBONES = ("conv4", "resnet12")
SOURCES = ("synthetic",)
Task = dict[str, Tensor]


def synthetic_task(rng: np.random.Generator, ways: int, shots: int, queries: int,
                   image_size: int) -> Task:
    """An N-way K-shot task of Gaussian images: shapes and cost of a real episode."""
    def images(n: int) -> Tensor:
        return torch.as_tensor(rng.standard_normal((n, 1, image_size, image_size)),
                               dtype=torch.float32)
    return {"support": images(ways * shots),
            "support_labels": torch.arange(ways).repeat_interleave(shots),
            "query": images(ways * queries),
            "query_labels": torch.arange(ways).repeat_interleave(queries)}


class FewShot(BilevelProblem):
    name = "fewshot"
    episodic = True
    defaults: ClassVar[dict[str, Any]] = {"rounds": 100, "inner_steps": 5, "inner_lr": 0.1, "outer_steps": 1,
                "outer_lr": 0.01, "terms": 10, "step": 0.1, "mu": 1e-3, "eval_every": 10,
                "adapt_steps": 5}
    options: ClassVar[dict[str, Any]] = {"ways": 5, "shots": 1, "tasks": 2, "backbone": "conv4", "lam": 0.2,
               "source": "synthetic", "image_size": 28, "prune": "both"}

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        opts = {**self.options, **options}
        if opts["backbone"] not in BACKBONES:
            raise UnknownNameError("backbone", opts["backbone"], BACKBONES)
        if opts["source"] not in SOURCES:
            raise UnknownNameError("episode source", opts["source"], SOURCES)
        if opts["prune"] not in ("both", "none"):
            raise ConfigError(f"prune {opts['prune']!r} is not one of: both, none")
        for key in ("ways", "shots", "tasks"):
            if int(opts[key]) < 1:
                raise ConfigError(f"{key}={opts[key]!r} must be an integer ≥ 1")
        if not 1 <= int(opts["shots"]) < 20:
            raise ConfigError(f"shots={opts['shots']!r} must be in 1..19 (20 drawings per class)")
        self.opts, self.num_clients = opts, clients
        self.backbone = MODELS[opts["backbone"]]()
        bb_plan = self.backbone.channel_plan("backbone.")
        axis = self.backbone.feature_axis("backbone.")
        plan = merge_plans(bb_plan, head_plan(axis, bb_plan.groups[axis.group], prefix="head."))
        self.plan = plan if opts["prune"] == "both" else ChannelPlan(plan.groups, {})
        self.ways = int(opts["ways"])

    def init_params(self, seed: int) -> tuple[Params, Params]:
        torch.manual_seed(seed)
        for m in self.backbone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        x = {f"backbone.{n}": p.detach().clone() for n, p in self.backbone.named_parameters()}
        d = self.backbone.out_features
        y = {"head.weight": torch.zeros(self.ways, d), "head.bias": torch.zeros(self.ways)}
        return x, y

    def inner_batch(self, task: Task) -> Task:
        return {**task, "query": task["query"][:0], "query_labels": task["query_labels"][:0]}

    def cost_key(self, client: int) -> tuple:
        return ()

    def sample(self, client: int, phase: str, rng: np.random.Generator) -> list[Task]:
        o = self.opts
        shots = int(o["shots"])
        return [synthetic_task(rng, self.ways, shots, 20 - shots, int(o["image_size"]))
                for _ in range(int(o["tasks"]))]

    # --- losses, split at the backbone features (computed once per hypergradient) ----------
    def _embed(self, x: Params, images: Tensor) -> Tensor:
        """φ_x(images): the backbone on one set (its own batch statistics), flattened."""
        params = {n.removeprefix("backbone."): p for n, p in x.items()}
        if len(images) == 0:
            return images.new_zeros(0, self.backbone.out_features)
        return functional_call(self.backbone, params, (images,)).flatten(1)

    def features(self, x: Params, task: Task) -> tuple[Tensor, Tensor]:
        """(φ_x(S), φ_x(Q)): the x-only part of both losses, computed once per hypergradient."""
        return self._embed(x, task["support"]), self._embed(x, task["query"])

    def _logits(self, feats: Tensor, y: Params) -> Tensor:
        return F.linear(feats, y["head.weight"], y["head.bias"])

    def inner_loss_from(self, feats: tuple[Tensor, Tensor | None], y: Params, task: Task) -> Tensor:
        l2 = sum((p * p).sum() for p in y.values())
        return F.cross_entropy(self._logits(feats[0], y), task["support_labels"]) \
            + 0.5 * float(self.opts["lam"]) * l2

    def outer_loss_from(self, feats: tuple[Tensor | None, Tensor], y: Params, task: Task) -> Tensor:
        return F.cross_entropy(self._logits(feats[1], y), task["query_labels"])

    def inner_loss(self, x: Params, y: Params, task: Task) -> Tensor:
        return self.inner_loss_from((self._embed(x, task["support"]), None), y, task)

    def outer_loss(self, x: Params, y: Params, task: Task) -> Tensor:
        return self.outer_loss_from((None, self._embed(x, task["query"])), y, task)

    def config(self) -> dict[str, Any]:
        return dict(self.opts)
