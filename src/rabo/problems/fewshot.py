"""Few-shot hyper-representation learning (paper V-A, docs/algorithm.md §7 `fewshot`): episodic
bilevel.

x = backbone (Conv-4 by default), y = linear head initialisation (N × d + bias) with L2 λ.
For a task τ with support S and query Q: g = CE(head_y(φ_x(S))) + λ/2‖y‖²,
f = CE(head_y(φ_x(Q))). φ_x ends by rescaling each feature vector to root-mean-square
``feature_rms`` (0 turns it off), so λ_max(∇²_yy g) ≤ ½(d·feature_rms² + 1) + λ for every x and
the fixed head steps η_y, η_N stay stable (why, and the value: docs/tuning.md §fewshot). The
bound grows with the feature count d, so the default is Conv-4's tuned 1.5 at d = 64 carried to
the same feature norm: 1.5·√(64/d) (:func:`default_feature_rms`; 0.53 for ResNet-12).
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
``prototype`` (ProtoNet) or ``meta`` (first-order MAML), one object each
(:mod:`rabo.problems.fewshot_heads`); the episodes come from :mod:`rabo.problems.fewshot_data`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call
from tqdm import tqdm

from .. import streams
from ..errors import ConfigError, UnknownNameError
from ..models import MODELS, compiled_call, fresh_params, rms_scaled
from ..problem import BilevelProblem, Bound, PlanModel, Task
from ..submodel import ChannelPlan, Params
from .fewshot_data import SOURCES, Episode, episode_source
from .fewshot_heads import HEADS, Features

BACKBONES = ("conv4", "resnet12")
# feature_rms tuned for Conv-4 (docs/tuning.md §fewshot) and Conv-4's feature count
CONV4_RMS, CONV4_FEATURES = 1.5, 64
# test episodes evaluated together: their images (E·100·28² floats, 15 MiB at 5w1s) bound memory
EVAL_CHUNK = 50


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
        "feature_rms": CONV4_RMS, "compile": False}   # feature_rms: see default_feature_rms
    ranges: ClassVar[dict[str, Bound]] = {
        "ways": Bound(1, 1000), "tasks": Bound(1, 10_000),
        "lam": Bound(0, 1e6), "image_size": Bound(16, 256), "eval_episodes": Bound(1, 10**6),
        "final_episodes": Bound(1, 10**6), "eval_steps": Bound(0, 10**6),
        "eval_lr": Bound(0, 1e3, above=True), "maml_steps": Bound(1, 1000),
        "maml_lr": Bound(0, 1e3, above=True), "feature_rms": Bound(0, 1e6)}

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        opts = {**self.options, **options}
        check_options(opts)
        self.opts, self.num_clients, self.ways = opts, clients, int(opts["ways"])
        self.backbone = MODELS[opts["backbone"]]()
        if "feature_rms" not in options:
            opts["feature_rms"] = default_feature_rms(self.backbone.out_features)
        self.head = HEADS[opts["head"]](self.ways, opts, self._embed)
        self.feature_axis = self.backbone.feature_axis("backbone.")   # what the head reads
        plan = self.head.plan(self.backbone.channel_plan("backbone."), self.feature_axis)
        self.plan = plan if opts["prune"] == "both" else ChannelPlan(plan.groups, {})
        self.episodes = episode_source(opts, clients, seed, data_dir)

    def init_params(self, seed: int) -> tuple[Params, Params]:
        x = fresh_params(self.backbone, seed, prefix="backbone.")
        return x, self.head.init(self.backbone.out_features)

    # Stacked Conv-4 clients become grouped convolutions, slower than the clients one by one
    # (docs/tuning.md §speed); `--set batch_clients=true` still stacks them.
    batch_by_default = False

    @property
    def stackable(self) -> bool:
        """The linear head's losses vmap; prototypes (boolean class masks) and MAML's inner
        autograd do not."""
        return self.head.stackable

    def cost_key(self, client: int) -> tuple:
        return ()

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[Task]:
        """The client's meta-batch: ``tasks`` N-way K-shot episodes from its own classes, each
        a task whose support set every step of g reuses (:meth:`as_task`)."""
        return [self.as_task(self.episodes.train_task(client, rng))
                for _ in range(int(self.opts["tasks"]))]

    def as_task(self, episode: Episode) -> Task:
        """An episode split by the loss that reads it: g the support set; f what the head's f
        reads (the query set, and the support set for ``prototype`` and ``meta``)."""
        support = {k: episode[k] for k in ("support", "support_labels")}
        return Task((support,), self.head.outer_data(episode))

    def query_logits(self, x: Params, y: Params, tasks: Sequence[Episode]) -> Tensor:
        """The query logits (E × Q × N) of E test episodes on the frozen backbone x: a linear
        head fitted on each support set (``linear``, all E heads stepped together), the
        prototypes (``prototype``) or head and backbone adapted as in training (``meta``)."""
        return self.head.test_logits(x, y, tasks)

    def test_tasks(self, episodes: int, seed: int = 0) -> Iterator[Episode]:
        """The seeded test episodes (test alphabets' classes; synthetic ones for ``synthetic``),
        the same at every evaluation so that runs can be paired episode by episode."""
        rng = streams.rng(seed, streams.FEWSHOT_TEST)
        return (self.episodes.test_task(rng) for _ in range(episodes))

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
        if not self.episodes.scored:
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

    def features(self, x: Params, data: Episode) -> Features:
        """(φ_x(S), φ_x(Q)) of the sets ``data`` holds, None for one it does not: g's data
        give (φ_x(S), None), f's (None, φ_x(Q)); computed once per hypergradient."""
        def embed(key: str) -> Tensor | None:
            return self._embed(x, data[key]) if key in data else None
        return embed("support"), embed("query")

    def inner_loss_from(self, feats: Features, y: Params, task: Episode) -> Tensor:
        return self.head.inner_loss_from(feats, y, task)

    def outer_loss_from(self, feats: Features, y: Params, task: Episode) -> Tensor:
        return self.head.outer_loss_from(feats, y, task)

    def inner_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        return self.inner_loss_from((self._embed(x, task["support"]), None), y, task)

    def outer_loss(self, x: Params, y: Params, task: Episode) -> Tensor:
        return self.head.outer_loss(x, y, task)

    def plan_models(self) -> list[PlanModel]:
        """The backbone, on two random images (seeded), its features following the head's
        input group."""
        images = torch.randn(self.backbone.traced_input().shape,
                             generator=torch.Generator().manual_seed(0))
        return [PlanModel(self.backbone, images, "backbone.",
                          self.feature_axis)]

    def config(self) -> dict[str, Any]:
        """The options, with the episode split resolved (the alphabet lists ``validate``
        chose), so that a rebuild from them gives the same split."""
        opts = {**self.opts, **self.episodes.resolved()}
        return {k: v for k, v in opts.items() if k != "compile" or v}


def default_feature_rms(features: int) -> float:
    """``feature_rms`` where none is given: Conv-4's tuned 1.5 at its 64 features, and for d
    features 1.5·√(64/d) to two decimals (0.53 for ResNet-12's 512), the same feature norm
    ‖φ‖ = 12 and so the same head-curvature bound, under which the head steps tuned for Conv-4
    hold (docs/tuning.md §fewshot; at 1.5 ResNet-12's head steps diverged)."""
    return round(CONV4_RMS * math.sqrt(CONV4_FEATURES / features), 2)


def check_options(opts: Mapping[str, Any]) -> None:
    """Check the few-shot options' names and integer ranges (the numeric ones' documented
    ranges: :attr:`FewShot.ranges`) before any model is built or data read."""
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
