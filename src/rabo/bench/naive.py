"""The reference "naive loop" of `rabo bench`: the rounds of Algorithm 1 computed the way
FedNest / FedMBO reference code computes them, to time rabo's simulator against.

One client after another; per client and phase a fresh ``nn.Module`` of the submodel's widths
holding its extracted tensors as ``nn.Parameter``s; SGD steps by ``loss.backward()`` that redo
the whole forward every step (no feature caching); the Neumann hypergradient by plain autograd
double backward (∇_y g with ``create_graph``, Q − 1 Hessian-vector products, one mixed product
∇_x⟨∇_y g, v⟩); aggregation in a plain loop over parameters and clients.

It shares with rabo only what is not client compute, so that data and masks are identical: who
takes part (:func:`rabo.server.participants`), the mask policy
(:func:`rabo.server.round_masks`), :meth:`~rabo.submodel.ChannelPlan.extract` and the plan's
coordinates, the clients' samplers (:func:`rabo.streams.client_rng`, ``problem.sample``) and the
problems' loss formulas. After R rounds its x and y must equal the simulator's
(docs/algorithm.md §2, §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import server
from ..client import to_device
from ..errors import ConfigError
from ..experiment import Experiment
from ..models import MLP, Conv4, rms_scaled
from ..problem import Task
from ..problems.losstuning import balanced_cross_entropy, vs_loss
from ..streams import client_rng
from ..submodel import ChannelPlan, Params, SubmodelIndex


class QuadraticNet(nn.Module):
    """g = ½ yᵀA y − yᵀB x + λ/2‖y‖², f = ½‖y − c‖² + ½ xᵀD x on a client's coordinates."""

    def __init__(self, dim: int, lam: float, dtype: torch.dtype):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(dim, dtype=dtype))
        self.y = nn.Parameter(torch.zeros(dim, dtype=dtype))
        self.lam = lam

    def named(self) -> dict[str, nn.Parameter]:
        return {"x": self.x, "y": self.y}

    def inner_loss(self, batch: dict[str, Tensor]) -> Tensor:
        y, x = self.y, self.x
        return 0.5 * y @ batch["A"] @ y - y @ batch["B"] @ x + 0.5 * self.lam * y @ y

    def outer_loss(self, batch: dict[str, Tensor]) -> Tensor:
        r = self.y - batch["c"]
        return 0.5 * r @ r + 0.5 * self.x @ batch["D"] @ self.x


class LossTuningNet(nn.Module):
    """An MLP of the client's hidden widths (y) and the VS-loss parameters (x): g = VS loss on
    the train batch + λ_y/2‖y‖², f = balanced cross-entropy on the validation batch."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int,
                 weight_decay: float):
        super().__init__()
        self.net = MLP(in_features, tuple(hidden), num_classes)
        self.log_delta = nn.Parameter(torch.zeros(num_classes))
        self.iota = nn.Parameter(torch.zeros(num_classes))
        self.log_w = nn.Parameter(torch.zeros(num_classes))
        self.num_classes, self.weight_decay = num_classes, weight_decay

    def named(self) -> dict[str, nn.Parameter]:
        return {"log_delta": self.log_delta, "iota": self.iota, "log_w": self.log_w,
                **dict(self.net.named_parameters())}

    def inner_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = batch
        vs = {"log_delta": self.log_delta, "iota": self.iota, "log_w": self.log_w}
        l2 = sum((p * p).sum() for p in self.net.parameters())
        return vs_loss(self.net(inputs), labels, vs) + 0.5 * self.weight_decay * l2

    def outer_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = batch
        return balanced_cross_entropy(self.net(inputs), labels, self.num_classes)


class FewShotNet(nn.Module):
    """A Conv-4 backbone of the client's width (x) and a linear head on its features (y),
    rescaled to RMS ``feature_rms``: g = support CE + λ/2‖y‖², f = query CE; support and query
    are separate forwards (each normalised by its own batch statistics)."""

    def __init__(self, in_channels: int, hidden: int, image_size: int, ways: int, lam: float,
                 feature_rms: float):
        super().__init__()
        self.backbone = Conv4(in_channels, hidden, image_size)
        self.head = nn.Linear(self.backbone.out_features, ways)
        self.lam, self.feature_rms = lam, feature_rms

    def features(self, images: Tensor) -> Tensor:
        return rms_scaled(self.backbone(images), self.feature_rms)

    def named(self) -> dict[str, nn.Parameter]:
        return {**{f"backbone.{n}": p for n, p in self.backbone.named_parameters()},
                "head.weight": self.head.weight, "head.bias": self.head.bias}

    def inner_loss(self, task: dict[str, Tensor]) -> Tensor:
        l2 = sum((p * p).sum() for p in (self.head.weight, self.head.bias))
        return F.cross_entropy(self.head(self.features(task["support"])),
                               task["support_labels"]) + 0.5 * self.lam * l2

    def outer_loss(self, task: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(self.head(self.features(task["query"])), task["query_labels"])


def make_net(exp: Experiment, x: Params, y: Params) -> nn.Module:
    """A freshly built module whose layer widths are those of the extracted tensors (not loaded)."""
    problem = exp.problem
    if problem.name == "quadratic":
        return QuadraticNet(len(x["x"]), float(problem.lam), x["x"].dtype)
    if problem.name == "losstuning":
        model = exp.config.problem_options["model"]     # as resolved ("auto": the data's)
        if model != "mlp":
            raise ConfigError(f"the naive loop covers losstuning with model 'mlp', not "
                              f"{model!r}")
        layers = sum(1 for n in y if n.endswith(".weight"))
        hidden = [y[f"layers.{i}.weight"].shape[0] for i in range(layers - 1)]
        return LossTuningNet(y["layers.0.weight"].shape[1], hidden, problem.num_classes,
                             float(problem.opts["weight_decay"]))
    if problem.name == "fewshot":
        opts = problem.opts
        if opts["backbone"] != "conv4" or opts["head"] != "linear":
            raise ConfigError(f"the naive loop covers fewshot with backbone 'conv4' and head "
                              f"'linear', not {opts['backbone']!r} / {opts['head']!r}")
        convs = [x[f"backbone.blocks.{i}.conv.weight"] for i in range(4)]
        widths = {int(w.shape[0]) for w in convs}
        if len(widths) != 1:
            raise ConfigError(f"the naive loop needs one Conv-4 width per client, got "
                              f"{sorted(widths)}")
        return FewShotNet(convs[0].shape[1], widths.pop(), int(opts["image_size"]),
                          problem.ways, float(opts["lam"]), float(opts["feature_rms"]))
    raise ConfigError(f"the naive loop has no model of problem {problem.name!r}; allowed: "
                      f"fewshot, losstuning, quadratic")


def load_(params: dict[str, nn.Parameter], values: Params) -> None:
    """Copy ``values`` into the module's parameters of the same names, in place."""
    with torch.no_grad():
        for name, value in values.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{name}: module shape {tuple(params[name].shape)}, submodel "
                                 f"shape {tuple(value.shape)}")
            params[name].copy_(value)


def sgd(loss: Callable[[], Tensor], params: list[nn.Parameter], steps: int, lr: float) -> None:
    """``steps`` plain SGD steps θ ← θ − η∇θ on ``params``, the full forward recomputed each
    step. The update is written out: ``torch.optim.SGD``'s θ + (−η)·∇θ differs from the
    simulator's θ − η∇θ in the last bit, which loss tuning (ReLU kinks, η_x = 2) amplifies
    past 1e-5 within four rounds."""
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss().backward()
        with torch.no_grad():
            for p in params:
                p.sub_(lr * p.grad)


def _grads(output: Tensor, wrt: list[nn.Parameter], **kwargs) -> list[Tensor]:
    grads = torch.autograd.grad(output, wrt, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads)]


def neumann_hypergradient(net: nn.Module, x: list[nn.Parameter], y: list[nn.Parameter],
                          task: Task, terms: int, step: float) -> list[Tensor]:
    """ĥ = ∇_x f − ∇²_xy g · v with v = η Σ_{n<Q} (I − η ∇²_yy g)^n ∇_y f, by double backward
    (FedNest's ``hypergradient``): HVPs ∇_y⟨∇_y g, u⟩, the mixed term ∇_x⟨∇_y g, v⟩."""
    f = net.outer_loss(task.outer)
    grad_f = _grads(f, x + y)
    grad_x_f, grad_y_f = grad_f[:len(x)], grad_f[len(x):]
    grad_y_g = torch.autograd.grad(net.inner_loss(task.inner[0]), y, create_graph=True)
    term, total = grad_y_f, list(grad_y_f)
    for _ in range(terms - 1):
        hvp = _grads(grad_y_g, y, grad_outputs=term, retain_graph=True)
        term = [u - step * h for u, h in zip(term, hvp)]
        total = [s + u for s, u in zip(total, term)]
    v = [step * s for s in total]
    mixed = _grads(grad_y_g, x, grad_outputs=v)
    return [gf - m for gf, m in zip(grad_x_f, mixed)]


def aggregate(plan: ChannelPlan, params: Params, indices: Sequence[SubmodelIndex],
              deltas: Sequence[Params]) -> Params:
    """θ_j − (1/N_j) Σ_{i∈S_j} Δ_{i,j} where N_j > 0, θ_j elsewhere (eqs 6, 8), as a plain loop:
    per parameter, each client's Δ added into a full-size sum and its cover into a count."""
    new = {}
    for name, p in params.items():
        total, count = torch.zeros_like(p), torch.zeros_like(p)
        for index, delta in zip(indices, deltas):
            coords = [plan.coords(axis, index, size).to(p.device)
                      for axis, size in zip(plan.axes(name, p.ndim), p.shape)]
            grid = torch.meshgrid(*coords, indexing="ij")
            total[grid] += delta[name]
            count[grid] += 1
        new[name] = torch.where(count > 0, p - total / count.clamp(min=1), p)
    return new


class NaiveLoop:
    """The naive reference of the simulator's rounds: server state ``x``, ``y`` (on ``device``)
    and the next round; :meth:`step` runs one round."""

    def __init__(self, exp: Experiment, device: str | torch.device = "cpu"):
        if exp.settings.estimator != "neumann":
            raise ConfigError(f"the naive loop computes the neumann hypergradient, not "
                              f"{exp.settings.estimator!r}; use a method with estimator neumann")
        self.exp, self.device = exp, torch.device(device)
        x, y = exp.problem.init_params(exp.config.seed)
        self.x, self.y = to_device(x, self.device), to_device(y, self.device)
        self.round = 0

    def _tasks(self, client: int, phase: str, rng: Any, index: SubmodelIndex,
               steps: int) -> list[Task]:
        problem = self.exp.problem
        return [to_device(task.map(lambda batch: problem.restrict(batch, index)), self.device)
                for task in problem.sample(client, phase, rng, steps)]

    def _net(self, x: Params, y: Params) -> tuple[nn.Module, list, list]:
        """A fresh module holding (x̃, ỹ), and its x and y parameters in rabo's order."""
        net = make_net(self.exp, x, y).to(self.device)
        named = net.named()
        load_(named, {**x, **y})
        return net, [named[n] for n in x], [named[n] for n in y]

    def inner(self, client: int, index: SubmodelIndex, x: Params, y: Params) -> Params:
        """K SGD steps on ỹ with x̃ frozen (eq 5) per task, each from ỹ; Δ^y = ỹ^0 − the mean
        over tasks of ỹ^K."""
        exp, t = self.exp, self.round
        settings = exp.settings
        net, xp, yp = self._net(x, y)
        for p in xp:
            p.requires_grad_(False)
        rng = client_rng(exp.config.seed, t, client, "inner")
        finals = []
        for task in self._tasks(client, "inner", rng, index, settings.inner_steps):
            load_(dict(zip(y, yp)), y)
            for k in range(settings.inner_steps):
                batch = task.inner[task.inner_index(k)]
                sgd(lambda batch=batch: net.inner_loss(batch), yp, 1, settings.inner_lr)
            finals.append([p.detach().clone() for p in yp])
        return {n: y[n] - torch.stack([f[k] for f in finals]).mean(0) for k, n in enumerate(y)}

    def outer(self, client: int, index: SubmodelIndex, x: Params, y: Params) -> Params:
        """T steps x̃ ← x̃ − η_x ĥ at ỹ^{t+1} (eq 7); each task first adapts the head
        ``adapt_steps`` SGD steps from ỹ^{t+1}, ĥ is the mean over tasks. Δ^x = x̃^0 − x̃^T."""
        exp, t = self.exp, self.round
        settings = exp.settings
        options = settings.estimator_options
        net, xp, yp = self._net(x, y)
        rng = client_rng(exp.config.seed, t, client, "outer")
        for _ in range(settings.outer_steps):
            hypergrads = []
            for task in self._tasks(client, "outer", rng, index, 1):
                load_(dict(zip(y, yp)), y)
                for p in xp:
                    p.requires_grad_(False)
                sgd(lambda task=task: net.inner_loss(task.inner[0]), yp, settings.adapt_steps,
                    settings.inner_lr)
                for p in xp:
                    p.requires_grad_(True)
                hypergrads.append(neumann_hypergradient(net, xp, yp, task, options.terms,
                                                        options.step))
            with torch.no_grad():
                for k, p in enumerate(xp):
                    p -= settings.outer_lr * torch.stack([h[k] for h in hypergrads]).mean(0)
        return {n: x[n] - p.detach() for n, p in zip(x, xp)}

    def step(self) -> None:
        """One round: masks, every client's inner phase, y's aggregation, every client's outer
        phase at the new y, x's aggregation (docs/algorithm.md §2)."""
        exp, t = self.exp, self.round
        cfg, plan = exp.config, exp.problem.plan
        capacities = exp.schedule.at(t)
        chosen, failed = server.participants(cfg.clients, cfg.participation, cfg.fail_prob,
                                             cfg.seed, t)
        clients = [i for i in chosen if i not in failed]
        indices = server.round_masks(exp.policy, plan, self.x, self.y,
                                     [capacities[i] for i in clients], t, cfg.seed)
        deltas = [self.inner(i, index, plan.extract(self.x, index), plan.extract(self.y, index))
                  for i, index in zip(clients, indices)]
        self.y = aggregate(plan, self.y, indices, deltas)
        if exp.tunes_x:
            deltas = [self.outer(i, index, plan.extract(self.x, index),
                                 plan.extract(self.y, index))
                      for i, index in zip(clients, indices)]
            self.x = aggregate(plan, self.x, indices, deltas)
        self.round = t + 1
