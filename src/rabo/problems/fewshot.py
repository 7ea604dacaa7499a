"""Few-shot hyper-representation learning (paper V-A, docs/algorithm.md §7 `fewshot`): episodic
bilevel.

x = backbone (Conv-4 by default), y = linear head initialisation (N × d + bias) with L2 λ.
For a task τ with support S and query Q: g = CE(head_y(φ_x(S))) + λ/2‖y‖²,
f = CE(head_y(φ_x(Q))). φ_x ends by rescaling each feature vector to root-mean-square
``feature_rms`` (0 turns it off), so λ_max(∇²_yy g) ≤ ½(d·feature_rms² + 1) + λ for every x and
the fixed head steps η_y, η_N stay stable (why, and the value: docs/tuning.md §fewshot).
Each client's meta-batch holds several N-way K-shot tasks; x and y share one channel plan, so
the head's input columns follow the backbone's kept channels.

Episodes come from an episode source: ``omniglot`` (from ``--data-dir``; alphabets split into
train and test, rotations as new classes, training characters sharded over the clients;
``validate`` evaluates on held-out training alphabets instead, for tuning) or
``synthetic`` (random images of the right shapes, for cost accounting; no accuracy).
Evaluation: frozen global backbone, a head fitted on each test episode's support set (the heads
of ``EVAL_CHUNK`` episodes stepped together), mean query accuracy with a 95 % interval;
``eval_episodes`` on evaluation rounds, ``final_episodes`` on the last.

``head`` chooses what is learned (docs/algorithm.md §5): ``linear`` (the bilevel problem above),
``prototype`` (ProtoNet: no head, y empty; f = CE of the logits −‖φ(q) − c_k‖², c_k the mean
support feature of class k; evaluated with prototypes) or ``meta`` (first-order MAML: x is the
backbone, y empty; each task starts its head at zero (the "zeroing trick" of Kao et al., ICLR
2022: a meta-learned head sees random label permutations, and its first-order gradient only
adds a per-class bias that every task then has to unlearn; docs/tuning.md §fewshot); f =
query CE at (x, 0)' = (x, 0) − α Σ_k ∇g, ``maml_steps`` support-loss steps whose gradients are
constants, so ∇_x f is the FO-MAML gradient; evaluated by the same adaptation on each test
episode's support set).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from tqdm import tqdm

from .. import streams
from ..data import load_omniglot, sample_task, shard_classes, split_alphabets
from ..errors import ConfigError, DataError, UnknownNameError
from ..models import MODELS, compiled_call, fresh_params, head_plan, merge_plans, rms_scaled
from ..problem import BilevelProblem, Bound, PlanModel, Task
from ..submodel import ChannelPlan, Params

BACKBONES = ("conv4", "resnet12")
SOURCES = ("omniglot", "synthetic")
HEADS = ("linear", "prototype", "meta")
Episode = dict[str, Tensor]
# test episodes evaluated together: their images (E·100·28² floats, 15 MiB at 5w1s) bound memory
EVAL_CHUNK = 50


def synthetic_task(rng: np.random.Generator, ways: int, shots: int, queries: int,
                   image_size: int) -> Episode:
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
    # step (η_N) 0.03: the Neumann series needs η_N·λ_max(∇²_yy g) < 2, and λ_max reaches 21–25
    # on trained Conv-4 features at RMS 1.5 (configs/fewshot.toml)
    defaults: ClassVar[dict[str, Any]] = {
        "rounds": 100, "inner_steps": 5, "inner_lr": 0.1, "outer_steps": 1, "outer_lr": 0.01,
        "terms": 10, "step": 0.03, "mu": 1e-3, "difference": "forward", "eval_every": 10,
        "adapt_steps": 5}
    options: ClassVar[dict[str, Any]] = {
        "ways": 5, "shots": 1, "tasks": 2, "backbone": "conv4", "lam": 0.2, "source": "omniglot",
        "image_size": 28, "prune": "both", "train_alphabets": "", "test_alphabets": "",
        "eval_episodes": 100, "final_episodes": 600, "eval_steps": 50, "eval_lr": 0.1,
        "cache_dir": "", "head": "linear", "maml_steps": 1, "maml_lr": 0.4, "validate": False,
        "feature_rms": 1.5, "compile": False}
    ranges: ClassVar[dict[str, Bound]] = {
        "ways": Bound(1, 1000), "tasks": Bound(1, 10_000),
        "lam": Bound(0, 1e6), "image_size": Bound(16, 256), "eval_episodes": Bound(1, 10**6),
        "final_episodes": Bound(1, 10**6), "eval_steps": Bound(0, 10**6),
        "eval_lr": Bound(0, 1e3, above=True), "maml_steps": Bound(1, 1000),
        "maml_lr": Bound(0, 1e3, above=True), "feature_rms": Bound(0, 1e6)}

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        opts = {**self.options, **options}
        if opts["backbone"] not in BACKBONES:
            raise UnknownNameError("backbone", opts["backbone"], BACKBONES)
        if opts["source"] not in SOURCES:
            raise UnknownNameError("episode source", opts["source"], SOURCES)
        if opts["head"] not in HEADS:
            raise UnknownNameError("fewshot head", opts["head"], HEADS)
        if opts["prune"] not in ("both", "none"):
            raise ConfigError(f"prune {opts['prune']!r} is not one of: both, none")
        if not float(opts["feature_rms"]) >= 0:
            raise ConfigError(f"feature_rms={opts['feature_rms']!r} must be a number ≥ 0 "
                              f"(0: features as the backbone gives them)")
        for key in ("ways", "shots", "tasks", "maml_steps"):
            if int(opts[key]) < 1:
                raise ConfigError(f"{key}={opts[key]!r} must be an integer ≥ 1")
        if not 1 <= int(opts["shots"]) < 20:
            raise ConfigError(f"shots={opts['shots']!r} must be in 1..19 (20 drawings per class)")
        self.opts, self.num_clients = opts, clients
        self.backbone = MODELS[opts["backbone"]]()
        bb_plan = self.backbone.channel_plan("backbone.")
        axis = self.backbone.feature_axis("backbone.")
        self.head = opts["head"]
        plan = bb_plan if self.head != "linear" else \
            merge_plans(bb_plan, head_plan(axis, bb_plan.groups[axis.group], prefix="head."))
        self.plan = plan if opts["prune"] == "both" else ChannelPlan(plan.groups, {})
        self.ways = int(opts["ways"])
        if opts["source"] == "omniglot":
            if int(opts["image_size"]) != 28:
                raise ConfigError(f"image_size={opts['image_size']!r}: Omniglot episodes are "
                                  f"28×28")
            if not data_dir:
                raise DataError("fewshot on Omniglot needs --data-dir: a directory with "
                                "images_background(.zip)/images_evaluation(.zip) or "
                                "images_background_small1/2(.zip)")
            self.omniglot = load_omniglot(data_dir, opts["cache_dir"] or None, quiet=True)
            self.split = split_alphabets(self.omniglot, opts["train_alphabets"] or None,
                                         opts["test_alphabets"] or None,
                                         validate=bool(opts["validate"]))
            opts["train_alphabets"] = ",".join(self.split.train_alphabets)
            opts["test_alphabets"] = ",".join(self.split.test_alphabets)
            opts["validate"] = False  # resolved into the alphabet lists: a rebuild keeps them
            self.shards = shard_classes(self.split.train_classes, clients, self.ways,
                                        streams.rng(seed, streams.FEWSHOT_SHARDS))

    def init_params(self, seed: int) -> tuple[Params, Params]:
        x = fresh_params(self.backbone, seed, prefix="backbone.")
        d = self.backbone.out_features
        head = {"head.weight": torch.zeros(self.ways, d), "head.bias": torch.zeros(self.ways)}
        return (x, head) if self.head == "linear" else (x, {})

    # Stacked Conv-4 clients become grouped convolutions, slower than the clients one by one
    # (docs/tuning.md §speed); `--set batch_clients=true` still stacks them.
    batch_by_default = False

    @property
    def stackable(self) -> bool:
        """The linear head's losses vmap; prototypes (boolean class masks) and MAML's inner
        autograd do not."""
        return self.head == "linear"

    def cost_key(self, client: int) -> tuple:
        return ()

    def _task(self, classes: np.ndarray | None, rng: np.random.Generator) -> Episode:
        shots = int(self.opts["shots"])
        if self.opts["source"] == "synthetic":
            return synthetic_task(rng, self.ways, shots, 20 - shots, int(self.opts["image_size"]))
        return sample_task(self.omniglot, classes, self.ways, shots, None, rng)

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[Task]:
        """The client's meta-batch: ``tasks`` N-way K-shot episodes from its own classes, each
        a task whose support set every step of g reuses (:meth:`as_task`)."""
        classes = self.shards[client] if self.opts["source"] == "omniglot" else None
        return [self.as_task(self._task(classes, rng)) for _ in range(int(self.opts["tasks"]))]

    def as_task(self, episode: Episode) -> Task:
        """An episode split by the loss that reads it: g the support set; f the query set (and
        the support set for ``prototype`` and ``meta``, whose f averages or adapts to it)."""
        support = {k: episode[k] for k in ("support", "support_labels")}
        query = {k: episode[k] for k in ("query", "query_labels")}
        return Task((support,), query if self.head == "linear" else episode)

    def fitted_heads(self, support: Tensor, labels: Tensor, y: Params) -> Params:
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

    def query_logits(self, x: Params, y: Params, tasks: Sequence[Episode]) -> Tensor:
        """The query logits (E × Q × N) of E test episodes on the frozen backbone x: a linear
        head fitted on each support set (``linear``, all E heads stepped together), the
        prototypes (``prototype``) or head and backbone adapted as in training (``meta``)."""
        if self.head == "linear":
            # one forward per episode set (its own batch statistics): folding the episodes into
            # one convolution with vmap is slower (docs/tuning.md §speed)
            with torch.no_grad():
                support, query = (torch.stack(f) for f in zip(*(
                    self.features(x, t) for t in tasks)))
                heads = self.fitted_heads(support, torch.stack([t["support_labels"]
                                                                for t in tasks]), y)
                return torch.func.vmap(self._logits)(query, heads)
        logits = []
        for task in tasks:
            xt = self.adapt(x, task) if self.head == "meta" else x
            with torch.no_grad():
                logits.append(self._query_logits(self.features(xt, task), xt, task))
        return torch.stack(logits)

    def test_tasks(self, episodes: int, seed: int = 0) -> Iterator[Episode]:
        """The seeded test episodes (test alphabets' classes; synthetic ones for ``synthetic``),
        the same at every evaluation so that runs can be paired episode by episode."""
        rng = streams.rng(seed, streams.FEWSHOT_TEST)
        classes = self.split.test_classes if self.opts["source"] == "omniglot" else None
        return (self._task(classes, rng) for _ in range(episodes))

    def episode_accuracies(self, x: Params, y: Params, tasks: Iterable[Episode],
                           total: int | None = None) -> np.ndarray:
        """Query accuracy of every episode, in order: :meth:`query_logits` on chunks of
        ``EVAL_CHUNK`` episodes (bounded memory), with a progress bar on a terminal."""
        accs: list[np.ndarray] = []
        with tqdm(total=total, desc="test episodes", leave=False, disable=None) as bar:
            episodes = iter(tasks)
            while chunk := list(itertools.islice(episodes, EVAL_CHUNK)):
                logits = self.query_logits(x, y, chunk)
                labels = torch.stack([t["query_labels"] for t in chunk])
                accs.append((logits.argmax(-1) == labels).float().mean(-1).cpu().numpy())
                bar.update(len(chunk))
        return np.concatenate(accs).astype(np.float64) if accs else np.zeros(0)

    def evaluate_episodes(self, x: Params, y: Params, episodes: int,
                          seed: int = 0) -> dict[str, Any]:
        """Mean query accuracy over ``episodes`` test episodes (test alphabets' classes) with a
        95 % interval 1.96·σ/√E; the same seeded episodes at every evaluation."""
        if self.opts["source"] == "synthetic":
            return {}
        accs = self.episode_accuracies(x, y, self.test_tasks(episodes, seed), episodes)
        return {"accuracy": float(accs.mean()),
                "accuracy_ci95": float(1.96 * accs.std(ddof=1) / np.sqrt(episodes))
                if episodes > 1 else 0.0, "episodes": episodes,
                "episode_accuracies": accs.tolist()}

    def evaluate(self, x: Params, y: Params, final: bool) -> dict[str, Any]:
        """``eval_episodes`` test episodes, or ``final_episodes`` on the run's last round, where
        the per-episode accuracies are kept too: every run sees the same episodes, so two runs
        can be compared episode by episode (a paired interval:
        :func:`rabo.reproduce.difference`)."""
        episodes = self.opts["final_episodes"] if final else self.opts["eval_episodes"]
        scores = self.evaluate_episodes(x, y, int(episodes))
        if not final:
            scores.pop("episode_accuracies", None)
        return scores

    # --- losses, split at the backbone features (computed once per hypergradient) ----------
    def _embed(self, x: Params, images: Tensor) -> Tensor:
        """φ_x(images): the backbone on one set (its own batch statistics), flattened."""
        params = {n.removeprefix("backbone."): p for n, p in x.items()
                  if n.startswith("backbone.")}
        call = compiled_call if self.opts["compile"] else functional_call
        return rms_scaled(call(self.backbone, params, (images,)).flatten(1),
                          float(self.opts["feature_rms"]))

    def features(self, x: Params, data: Episode) -> tuple[Tensor | None, Tensor | None]:
        """(φ_x(S), φ_x(Q)) of the sets ``data`` holds, None for one it does not: g's data
        give (φ_x(S), None), f's (None, φ_x(Q)); computed once per hypergradient."""
        def embed(key: str) -> Tensor | None:
            return self._embed(x, data[key]) if key in data else None
        return embed("support"), embed("query")

    def _logits(self, feats: Tensor, head: Params) -> Tensor:
        return F.linear(feats, head["head.weight"], head["head.bias"])

    def _query_logits(self, feats: tuple[Tensor | None, Tensor], head: Params,
                      task: Episode) -> Tensor:
        """The query's logits: −‖φ(q) − c_k‖² to the prototypes c_k (mean support feature of
        class k) for ``prototype``, the linear ``head`` (y, or x for ``meta``) otherwise."""
        if self.head != "prototype":
            return self._logits(feats[1], head)
        labels = task["support_labels"]
        protos = torch.stack([feats[0][labels == k].mean(0) for k in range(self.ways)])
        return -((feats[1][:, None, :] - protos[None]) ** 2).sum(-1)

    def adapt(self, x: Params, task: Episode) -> Params:
        """``meta``: (x, 0)' = (x, 0) − α Σ_k ∇ CE_S(x_k, W_k), ``maml_steps`` steps of backbone
        and a zero-started head W on the support set with the gradients detached (first-order
        MAML), so x' carries x's graph with ∂x'/∂x = I."""
        lr, labels = float(self.opts["maml_lr"]), task["support_labels"]
        shift = {n: torch.zeros_like(p) for n, p in x.items()}
        head: Params = {}
        for _ in range(int(self.opts["maml_steps"])):
            xk = {n: (p - shift[n]).detach().requires_grad_(True) for n, p in x.items()}
            with torch.enable_grad():
                feats = self._embed(xk, task["support"])
                head = {n: p.detach().requires_grad_(True) for n, p in head.items()} or {
                    "head.weight": feats.new_zeros(self.ways, feats.shape[1], requires_grad=True),
                    "head.bias": feats.new_zeros(self.ways, requires_grad=True)}
                grads = torch.autograd.grad(F.cross_entropy(self._logits(feats, head), labels),
                                            [*xk.values(), *head.values()])
            shift = {n: shift[n] + lr * g for n, g in zip(xk, grads)}
            head = {n: (p - lr * g).detach() for (n, p), g in zip(head.items(), grads[len(xk):])}
        return {**{n: p - shift[n] for n, p in x.items()}, **head}

    def inner_loss_from(self, feats: tuple[Tensor, Tensor | None], y: Params,
                        task: Episode) -> Tensor:
        if self.head != "linear":
            raise ConfigError(f"fewshot with head={self.head!r} has no inner problem g "
                              f"(y is empty); use the first-order estimator")
        l2 = sum((p * p).sum() for p in y.values())
        return F.cross_entropy(self._logits(feats[0], y), task["support_labels"]) \
            + 0.5 * float(self.opts["lam"]) * l2

    def outer_loss_from(self, feats: tuple[Tensor | None, Tensor], y: Params,
                        task: Episode) -> Tensor:
        return F.cross_entropy(self._query_logits(feats, y, task), task["query_labels"])

    def inner_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        return self.inner_loss_from((self._embed(x, task["support"]), None), y, task)

    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        if self.head == "meta":
            x = self.adapt(x, task)
            return self.outer_loss_from((None, self._embed(x, task["query"])), x, task)
        support = self._embed(x, task["support"]) if self.head == "prototype" else None
        return self.outer_loss_from((support, self._embed(x, task["query"])), y, task)

    def plan_models(self) -> list[PlanModel]:
        """The backbone, on two random images (seeded), its features following the head's
        input group."""
        images = torch.randn(self.backbone.traced_input().shape,
                             generator=torch.Generator().manual_seed(0))
        return [PlanModel(self.backbone, images, "backbone.",
                          self.backbone.feature_axis("backbone."))]

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.opts.items() if k != "compile" or v}

