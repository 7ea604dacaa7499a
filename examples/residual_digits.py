"""A user's own bilevel problem and model, run by rabo without touching rabo's source.

Hyper-representation learning on scikit-learn's digits (bundled: no download): the outer
variable x is a small residual CNN with BatchNorm (the shared representation), the inner
variable y a linear classifier head on its features:

    g_i(x, y) = CE(head_y(φ_x(train batch of client i))) + λ/2 ‖y‖²
    f_i(x, y) = CE(head_y(φ_x(validation batch of client i)))

The channel plan, which rabo needs to cut each client's submodel to its capacity, is traced from
the model (``rabo.trace_plan``): the residual sums couple their two branches and the BatchNorms
on them, the head's input columns follow the last block's channels, and the class scores stay
full. Run it from the command line by reference, e.g.

    rabo run examples/residual_digits.py:ResidualDigits --method rabo --out runs/resdigits
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import rabo
from rabo.data import load_digits_arrays

Batch = tuple[Tensor, Tensor]  # images and labels


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (or a 1×1 conv + BN when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, track_running_stats=False)   # batch statistics only:
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)  # a submodel has no
        self.bn2 = nn.BatchNorm2d(cout, track_running_stats=False)   # running statistics
        self.shortcut = None if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, track_running_stats=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Net(nn.Module):
    """Stem, an identity and a projection residual block, global pooling, a linear head."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block1, self.block2 = Residual(width, width), Residual(width, 2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.block2(self.block1(torch.relu(self.stem(images)))).mean(dim=(2, 3))
        return self.head(features)


class ResidualDigits(rabo.BilevelProblem):
    """x: the residual backbone, y: the head; each client holds a shard of the digits."""

    name = "residual-digits"
    # η_y, η_x chosen on the clients' validation loss f (20 rounds of rabo and fedmbo:
    # 0.1/0.05 left f at 2.10/1.74, 0.5/0.3 at 1.57/0.67)
    defaults: ClassVar[dict[str, Any]] = {"rounds": 30, "inner_steps": 5, "inner_lr": 0.5,
                                          "outer_steps": 1, "outer_lr": 0.3, "terms": 10,
                                          "step": 0.1, "mu": 1e-3, "eval_every": 5}
    options: ClassVar[dict[str, Any]] = {"width": 16, "batch_size": 64, "lam": 0.01,
                                         "test": 400}

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        self.opts = {**self.options, **options}
        self.num_clients = clients
        inputs, labels = load_digits_arrays()
        images = torch.from_numpy(inputs).reshape(-1, 1, 8, 8)
        order = np.random.default_rng([seed, 7]).permutation(len(labels))
        test, rest = order[:int(self.opts["test"])], order[int(self.opts["test"]):]
        self.images, self.labels = images, torch.from_numpy(labels)
        self.test = torch.as_tensor(test)
        # client i: a training and a validation shard (4 : 1) of the non-test digits
        shards = np.array_split(rest, clients)
        self.shards = [(s[: 4 * len(s) // 5], s[4 * len(s) // 5:]) for s in shards]
        self.net = Net(int(self.opts["width"]))
        self.plan = rabo.trace_plan(self.net, images[:2])

    def init_params(self, seed: int) -> tuple[rabo.Params, rabo.Params]:
        torch.manual_seed(seed)
        net = Net(int(self.opts["width"]))
        params = {n: p.detach().clone() for n, p in net.named_parameters()}
        y = {n: p for n, p in params.items() if n.startswith("head.")}
        return {n: p for n, p in params.items() if n not in y}, y

    def _batch(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        size = min(int(self.opts["batch_size"]), len(idx))
        chosen = torch.as_tensor(rng.choice(idx, size=size, replace=False))
        return self.images[chosen], self.labels[chosen]

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[rabo.Task]:
        """One task: g reads ``steps`` training batches (one per step), f, in the outer phase,
        a validation batch; rabo evaluates g only on the first and f only on the second."""
        train, val = self.shards[client]
        inner = tuple(self._batch(train, rng) for _ in range(steps))
        outer = self._batch(val, rng) if phase == "outer" else None
        return [rabo.Task(inner, outer)]

    def _loss(self, x: rabo.Params, y: rabo.Params, data: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = data
        return F.cross_entropy(functional_call(self.net, {**x, **y}, (images,)), labels)

    def inner_loss(self, x: rabo.Params, y: rabo.Params, data: Batch) -> Tensor:
        l2 = sum((p * p).sum() for p in y.values())
        return self._loss(x, y, data) + 0.5 * float(self.opts["lam"]) * l2

    def outer_loss(self, x: rabo.Params, y: rabo.Params, data: Batch) -> Tensor:
        return self._loss(x, y, data)

    def plan_models(self) -> list[rabo.PlanModel]:
        """The network the plan prunes, on two digits: building a run checks the plan on it."""
        return [rabo.PlanModel(self.net, self.images[:2])]

    def evaluate(self, x: rabo.Params, y: rabo.Params, final: bool) -> dict[str, float]:
        with torch.no_grad():
            logits = functional_call(self.net, {**x, **y}, (self.images[self.test],))
        return {"accuracy": float((logits.argmax(1) == self.labels[self.test]).float().mean())}

    def config(self) -> dict[str, Any]:
        return dict(self.opts)
