"""Named presets: a method is a mask policy × a hypergradient estimator (docs/algorithm.md §5),
plus the problem options it needs (ProtoNet and MAML reshape the few-shot problem instead of
adding a second training loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, lookup


@dataclass(frozen=True)
class Method:
    """``estimator=None``: x stays at its initial value (no outer phase), e.g. untuned FedAvg.
    ``problem_options`` override the problem's options; ``problems`` (empty: any) are the
    problems the method is defined on."""

    name: str
    policy: str
    estimator: str | None
    summary: str
    problem_options: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def check_problem(self, problem: str) -> None:
        if self.problems and problem not in self.problems:
            raise ConfigError(f"method {self.name!r} runs only on problem "
                              f"{', '.join(self.problems)}, not {problem!r}")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("rabo", "importance", "neumann", "RABO: dual pruning, importance masks, Neumann AID"),
    Method("rafbo", "importance", "fd-dir",
           "RAFBO: RABO with a second-order-free hypergradient (finite differences of first-order "
           "gradients: H u in the Neumann recursion, J v along v)"),
    Method("rabo-cov", "importance-cover", "neumann",
           "RABO with coverage-aware importance masks: windows tiled down the importance ranking, "
           "so every channel is trained by ⌊Σ⌈r·C⌉/C⌋ clients or more"),
    Method("rafbo-cov", "importance-cover", "fd-dir",
           "RAFBO with coverage-aware importance masks (as rabo-cov)"),
    Method("fedmbo", "full", "neumann", "FedMBO: full-model federated bilevel baseline"),
    Method("static", "static", "first-order", "HeteroFL-style static submodels, first-order x"),
    Method("fedrolex", "rolling", "first-order", "FedRolex rolling submodels, first-order x"),
    Method("fiarse", "fiarse", "first-order", "FIARSE importance-aware submodels, first-order x"),
    Method("oap", "coverage", "first-order", "coverage-tiled submodels (OAP), first-order x"),
    Method("fedavg", "full", None, "FedAvg on y with x fixed at its initial value (no tuning)"),
    Method("protonet", "full", "first-order",
           "distributed ProtoNet: FedAvg of the backbone x on the prototypical query loss "
           "(logits −‖φ(q) − c_k‖², c_k the class's mean support feature); no head, y empty, "
           "so the inner phase is a no-op", {"head": "prototype"}, ("fewshot",)),
    Method("maml", "full", "first-order",
           "distributed first-order MAML: the backbone is x (y empty); f is the query loss "
           "after `maml_steps` steps of `maml_lr` on the support loss of backbone and a "
           "zero-started head, with the adaptation's Jacobian dropped, so the first-order ĥ is "
           "the FO-MAML gradient; FedAvg", {"head": "meta"}, ("fewshot",)),
]}


def get_method(name: str) -> Method:
    return lookup(METHODS, "method", name)
