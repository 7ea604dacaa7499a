"""Federated loss-function tuning with the VS loss on long-tailed data (paper V-B,
docs/algorithm.md §7).

x = per-class VS-loss parameters (Δ, ι, w), never pruned; y = the network, pruned.
Data: scikit-learn digits (MLP, ρ = 10, the embedded default), or MNIST / Fashion-MNIST (small
CNN) and CIFAR-10 (ResNet-18) from ``--data-dir`` with ρ = 100 (``rho = 0`` and
``model = "auto"`` mean these per-dataset defaults); the data set's own test split is the
balanced test set.
g_i = VS loss on client i's train split + λ_y/2‖y‖²;  f_i = class-balanced cross-entropy on its
validation split. Positivity is kept by the parameterisation Δ = exp(log_delta) and
w = C · softmax(log_w) (weights average 1, so only their ratios are tuned); x = 0 is plain CE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..data import federated_longtail, load_dataset, load_digits_arrays, sample_batch
from ..errors import ConfigError, UnknownNameError, lookup
from ..models import MODELS, build_model, fresh_params
from ..problem import BilevelProblem, Bound, PlanModel, Task
from ..submodel import ChannelPlan, Params

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DEFAULT_RHO = {"digits": 10.0, "mnist": 100.0, "fashion-mnist": 100.0, "cifar10": 100.0}
DEFAULT_MODEL = {"digits": "mlp", "mnist": "small_cnn", "fashion-mnist": "small_cnn",
                 "cifar10": "resnet18"}


def vs_loss(logits: Tensor, labels: Tensor, x: Params) -> Tensor:
    """ℓ(z, c) = −w_c log softmax(Δ ⊙ z + ι)_c, averaged over the batch (Kini et al. 2021)."""
    num_classes = logits.shape[-1]
    delta = torch.exp(x["log_delta"])
    weight = num_classes * torch.softmax(x["log_w"], dim=0)
    ce = F.cross_entropy(logits * delta + x["iota"], labels, reduction="none")
    return (weight[labels] * ce).mean()


def balanced_cross_entropy(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean over the classes present in the batch of each class's mean cross-entropy."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    counts = torch.bincount(labels, minlength=num_classes).to(ce.dtype)
    per_class = torch.zeros(num_classes, dtype=ce.dtype, device=ce.device).index_add(0, labels, ce)
    present = counts > 0
    return (per_class[present] / counts[present]).mean()


def balanced_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean per-class recall (equals accuracy on a balanced set)."""
    pred = logits.argmax(-1)
    recalls = [float((pred[labels == c] == c).float().mean())
                for c in range(num_classes) if bool((labels == c).any())]
    return float(np.mean(recalls))


class LossTuning(BilevelProblem):
    name = "losstuning"
    defaults: ClassVar[dict[str, Any]] = {
        "rounds": 100, "inner_steps": 10, "inner_lr": 0.3, "outer_steps": 1, "outer_lr": 2.0,
        "terms": 10, "step": 0.1, "mu": 1e-2, "eval_every": 10}
    options: ClassVar[dict[str, Any]] = {
        "dataset": "digits", "model": "auto", "hidden": 128, "rho": 0.0, "batch_size": 32,
        "weight_decay": 3e-3, "partition": "iid", "alpha": 0.5, "test_per_class": 50,
        "prune": "y"}
    ranges: ClassVar[dict[str, Bound]] = {
        "hidden": Bound(1, 100_000), "rho": Bound(0, 1e6), "batch_size": Bound(1, 1_000_000),
        "weight_decay": Bound(0, 1e3), "alpha": Bound(0, 1e6, above=True),
        "test_per_class": Bound(1, 1_000_000)}

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        opts = {**self.options, **options}
        if opts["dataset"] not in DATASETS:
            raise UnknownNameError("dataset", opts["dataset"], DATASETS)
        if opts["prune"] not in ("y", "none"):
            raise ConfigError(f"prune {opts['prune']!r} is not one of: y, none "
                              f"(the VS-loss hyperparameters x are never pruned)")
        if int(opts["batch_size"]) < 1:
            raise ConfigError(f"batch_size={opts['batch_size']!r} must be an integer ≥ 1")
        self.opts, self.num_clients = opts, clients
        name = opts["dataset"]
        if name == "digits":
            inputs, labels = load_digits_arrays()
            test_idx = None
        else:
            train, test = load_dataset(name, data_dir)
            inputs = np.concatenate([train.inputs, test.inputs])
            labels = np.concatenate([train.labels, test.labels])
            test_idx = np.arange(len(train.labels), len(labels))
        self.num_classes = int(labels.max()) + 1
        rho = float(opts["rho"]) or DEFAULT_RHO[name]
        self.data = federated_longtail(inputs, labels, self.num_classes, clients, rho=rho,
                                       seed=seed, test_per_class=int(opts["test_per_class"]),
                                       scheme=opts["partition"], alpha=float(opts["alpha"]),
                                       test_idx=test_idx)
        model = opts["model"] if opts["model"] != "auto" else DEFAULT_MODEL[name]
        lookup(MODELS, "model", model)
        self.resolved = {"rho": rho, "model": model}   # what 0.0 and "auto" stood for
        kwargs = {"mlp": {"in_features": int(np.prod(inputs.shape[1:])),
                          "hidden": (int(opts["hidden"]),)},
                  "small_cnn": {"in_channels": inputs.shape[1], "image_size": inputs.shape[-1]},
                  "resnet18": {"in_channels": inputs.shape[1]}}
        if model not in kwargs:
            raise ConfigError(f"model {model!r} is not a classifier for loss tuning; allowed: "
                              f"{', '.join(kwargs)}")
        self.model, plan = build_model(model, num_classes=self.num_classes, **kwargs[model])
        self.plan = plan if opts["prune"] == "y" else ChannelPlan(plan.groups, {})
        self._test = self._tensors(self.data.test_idx)
        self._val = self._tensors(np.concatenate([v for _, v in self.data.clients]))

    def _tensors(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        return (torch.as_tensor(self.data.inputs[idx], dtype=torch.float32),
                torch.as_tensor(self.data.labels[idx], dtype=torch.int64))

    def init_params(self, seed: int) -> tuple[Params, Params]:
        y = fresh_params(self.model, seed)
        x = {n: torch.zeros(self.num_classes) for n in ("log_delta", "iota", "log_w")}
        return x, y

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[Task]:
        """One task: ``steps`` minibatches of the client's train split (g), then, in the outer
        phase, one of its validation split (f)."""
        train_idx, val_idx = self.data.clients[client]
        bs = int(self.opts["batch_size"])
        inner = tuple(sample_batch(self.data, train_idx, bs, rng) for _ in range(steps))
        outer = sample_batch(self.data, val_idx, bs, rng) if phase == "outer" else None
        return [Task(inner, outer)]

    def cost_key(self, client: int) -> tuple[int, int]:
        bs = int(self.opts["batch_size"])
        train_idx, val_idx = self.data.clients[client]
        return min(bs, len(train_idx)), min(bs, len(val_idx))

    def logits(self, y: Params, inputs: Tensor) -> Tensor:
        return functional_call(self.model, y, (inputs,))

    def inner_loss(self, x: Params, y: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = data
        l2 = sum((p * p).sum() for p in y.values())
        return vs_loss(self.logits(y, inputs), labels, x) + 0.5 * self.opts["weight_decay"] * l2

    def outer_loss(self, x: Params, y: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = data
        return balanced_cross_entropy(self.logits(y, inputs), labels, self.num_classes)

    def evaluate(self, x: Params, y: Params, final: bool) -> dict[str, float]:
        with torch.no_grad():
            test = balanced_accuracy(self.logits(y, self._test[0]), self._test[1],
                                     self.num_classes)
            val = balanced_accuracy(self.logits(y, self._val[0]), self._val[1], self.num_classes)
        return {"accuracy": test, "val_accuracy": val}

    def plan_models(self) -> list[PlanModel]:
        """The classifier y, on two test inputs; its class logits stay full."""
        return [PlanModel(self.model, self._test[0][:2])]

    def config(self) -> dict[str, Any]:
        """The options, with ``rho`` and ``model`` as resolved (the given ones are kept)."""
        return {**self.opts, **self.resolved}
