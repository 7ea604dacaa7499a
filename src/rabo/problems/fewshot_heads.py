"""What the few-shot problem learns on the backbone φ_x (docs/algorithm.md §5), one object per
``head`` option, chosen once by name from :data:`HEADS`:

- :class:`LinearHead` (``linear``): the bilevel problem, y a linear head (N × d + bias) with
  L2 λ; g = CE on the support set, f = CE on the query set; evaluated with a head fitted on each
  test episode's support set.
- :class:`PrototypeHead` (``prototype``, ProtoNet): no head, y empty; f = CE of the logits
  −‖φ(q) − c_k‖², c_k the mean support feature of class k; evaluated with prototypes.
- :class:`MetaHead` (``meta``, first-order MAML): y empty; each task starts its head at zero
  (the "zeroing trick" of Kao et al., ICLR 2022; docs/tuning.md §fewshot); f = query CE at
  (x, 0)' = (x, 0) − α Σ_k ∇g after ``maml_steps`` support-loss steps whose gradients are
  constants, so ∇_x f is the FO-MAML gradient; evaluated by the same adaptation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models import head_plan, merge_plans
from ..submodel import Axis, ChannelPlan, Params
from .fewshot_data import Episode

Embed = Callable[[Params, Tensor], Tensor]
"""φ_x(images): the backbone on one set, flattened (and rescaled)."""
Features = tuple[Tensor | None, Tensor | None]


def linear_logits(feats: Tensor, head: Params) -> Tensor:
    """A linear head's logits: ``head.weight`` · φ + ``head.bias``."""
    return F.linear(feats, head["head.weight"], head["head.bias"])


class Head(ABC):
    """One head mode: what y is (:meth:`plan`, :meth:`init`), what f reads
    (:meth:`outer_data`), g and f on the backbone's features, and the evaluation's query
    logits. This base is a head-less mode (y empty, f reads the whole episode)."""

    name: ClassVar[str]
    stackable: ClassVar[bool] = False  # the losses vmap over stacked clients

    def __init__(self, ways: int, opts: Mapping[str, Any], embed: Embed) -> None:
        self.ways, self.opts, self.embed = ways, opts, embed

    def plan(self, backbone: ChannelPlan, axis: Axis) -> ChannelPlan:
        """The channel plan of x and y: the backbone's (y is empty)."""
        return backbone

    def init(self, features: int) -> Params:
        """y at the start: empty."""
        return {}

    def outer_data(self, episode: Episode) -> Episode:
        """What f reads: the whole episode (f averages or adapts to the support set)."""
        return episode

    def episode_features(self, x: Params, task: Episode) -> Features:
        """(φ_x(S), φ_x(Q)) of a whole episode."""
        return self.embed(x, task["support"]), self.embed(x, task["query"])

    def inner_loss_from(self, feats: Features, y: Params, task: Episode) -> Tensor:
        raise ConfigError(f"fewshot with head={self.name!r} has no inner problem g "
                          f"(y is empty); use the first-order estimator")

    def query_logits(self, feats: Features, head: Params, task: Episode) -> Tensor:
        """The query's logits from the features: the linear ``head`` (y, or x for ``meta``)."""
        return linear_logits(feats[1], head)

    def outer_loss_from(self, feats: Features, y: Params, task: Episode) -> Tensor:
        return F.cross_entropy(self.query_logits(feats, y, task), task["query_labels"])

    @abstractmethod
    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        """f on the task's data, its features computed here."""

    def adapted(self, x: Params, task: Episode) -> Params:
        """The backbone the evaluation reads a test episode with: x itself."""
        return x

    def test_logits(self, x: Params, y: Params, tasks: Sequence[Episode]) -> Tensor:
        """The query logits (E × Q × N) of E test episodes, one episode after another."""
        logits = []
        for task in tasks:
            xt = self.adapted(x, task)
            with torch.no_grad():
                logits.append(self.query_logits(self.episode_features(xt, task), xt, task))
        return torch.stack(logits)


class LinearHead(Head):
    """``linear``: y = a linear head with L2 λ on the backbone's features, whose input columns
    follow the backbone's kept channels."""

    name = "linear"
    stackable = True

    def plan(self, backbone: ChannelPlan, axis: Axis) -> ChannelPlan:
        return merge_plans(backbone, head_plan(axis, backbone.groups[axis.group],
                                               prefix="head."))

    def init(self, features: int) -> Params:
        return {"head.weight": torch.zeros(self.ways, features),
                "head.bias": torch.zeros(self.ways)}

    def outer_data(self, episode: Episode) -> Episode:
        return {k: episode[k] for k in ("query", "query_labels")}

    def inner_loss_from(self, feats: Features, y: Params, task: Episode) -> Tensor:
        l2 = sum((p * p).sum() for p in y.values())
        return F.cross_entropy(linear_logits(feats[0], y), task["support_labels"]) \
            + 0.5 * float(self.opts["lam"]) * l2

    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        return self.outer_loss_from((None, self.embed(x, task["query"])), y, task)

    def fitted(self, support: Tensor, labels: Tensor, y: Params) -> Params:
        """Heads for E episodes at once (support features E × S × d, labels E × S): from the
        global head y, ``eval_steps`` gradient steps of ``eval_lr`` on each episode's own g (the
        gradient of the sum of the episodes' losses, so each head moves as if fitted alone). The
        default 0.1 was chosen on the validation alphabets (FedMBO and RABO checkpoints, 5w1s
        and 5w5s); 0.5 made g grow instead of fall on Conv-4 features (‖φ‖ ≈ 10)."""
        def g(head: Params, feats: Tensor, task_labels: Tensor) -> Tensor:
            return self.inner_loss_from((feats, None), head, {"support_labels": task_labels})

        step = torch.func.vmap(torch.func.grad(g))
        head = {n: p.detach().expand(len(support), *p.shape) for n, p in y.items()}
        for _ in range(int(self.opts["eval_steps"])):
            grads = step(head, support, labels)
            head = {n: p - float(self.opts["eval_lr"]) * grads[n] for n, p in head.items()}
        return head

    def test_logits(self, x: Params, y: Params, tasks: Sequence[Episode]) -> Tensor:
        """A head fitted on each support set, all E heads stepped together; one forward per
        episode set (its own batch statistics): folding the episodes into one convolution with
        vmap is slower (docs/tuning.md §speed)."""
        with torch.no_grad():
            support, query = (torch.stack(f) for f in zip(*(
                self.episode_features(x, t) for t in tasks)))
            heads = self.fitted(support, torch.stack([t["support_labels"] for t in tasks]), y)
            return torch.func.vmap(linear_logits)(query, heads)


class PrototypeHead(Head):
    """``prototype`` (ProtoNet): the query's logits are −‖φ(q) − c_k‖² to the prototypes c_k,
    the mean support feature of class k."""

    name = "prototype"

    def query_logits(self, feats: Features, head: Params, task: Episode) -> Tensor:
        labels = task["support_labels"]
        protos = torch.stack([feats[0][labels == k].mean(0) for k in range(self.ways)])
        return -((feats[1][:, None, :] - protos[None]) ** 2).sum(-1)

    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        support = self.embed(x, task["support"])
        return self.outer_loss_from((support, self.embed(x, task["query"])), y, task)


class MetaHead(Head):
    """``meta`` (first-order MAML): backbone and a zero-started head adapted to each task's
    support set, f the query CE of the adapted model."""

    name = "meta"

    def adapted(self, x: Params, task: Episode) -> Params:
        """(x, 0)' = (x, 0) − α Σ_k ∇ CE_S(x_k, W_k), ``maml_steps`` steps of backbone and a
        zero-started head W on the support set with the gradients detached (first-order MAML),
        so x' carries x's graph with ∂x'/∂x = I."""
        lr, labels = float(self.opts["maml_lr"]), task["support_labels"]
        shift = {n: torch.zeros_like(p) for n, p in x.items()}
        head: Params = {}
        for _ in range(int(self.opts["maml_steps"])):
            xk = {n: (p - shift[n]).detach().requires_grad_(True) for n, p in x.items()}
            with torch.enable_grad():
                feats = self.embed(xk, task["support"])
                head = {n: p.detach().requires_grad_(True) for n, p in head.items()} or {
                    "head.weight": feats.new_zeros(self.ways, feats.shape[1], requires_grad=True),
                    "head.bias": feats.new_zeros(self.ways, requires_grad=True)}
                grads = torch.autograd.grad(F.cross_entropy(linear_logits(feats, head), labels),
                                            [*xk.values(), *head.values()])
            shift = {n: shift[n] + lr * g for n, g in zip(xk, grads)}
            head = {n: (p - lr * g).detach() for (n, p), g in zip(head.items(), grads[len(xk):])}
        return {**{n: p - shift[n] for n, p in x.items()}, **head}

    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        x = self.adapted(x, task)
        return self.outer_loss_from((None, self.embed(x, task["query"])), x, task)


HEADS: dict[str, type[Head]] = {head.name: head for head in (LinearHead, PrototypeHead, MetaHead)}
