"""Named presets: a method is a mask policy × a hypergradient estimator (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import lookup


@dataclass(frozen=True)
class Method:
    """``estimator=None``: x stays at its initial value (no outer phase), e.g. untuned FedAvg."""

    name: str
    policy: str
    estimator: str | None
    summary: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("rabo", "importance", "neumann", "RABO: dual pruning, importance masks, Neumann AID"),
    Method("rafbo", "importance", "fd", "RAFBO: RABO with the second-order-free FD estimator"),
    Method("fedmbo", "full", "neumann", "FedMBO: full-model federated bilevel baseline"),
    Method("static", "static", "first-order", "HeteroFL-style static submodels, first-order x"),
    Method("fedrolex", "rolling", "first-order", "FedRolex rolling submodels, first-order x"),
    Method("fiarse", "fiarse", "first-order", "FIARSE importance-aware submodels, first-order x"),
    Method("oap", "coverage", "first-order", "coverage-tiled submodels (OAP), first-order x"),
    Method("fedavg", "full", None, "FedAvg on y with x fixed at its initial value (no tuning)"),
]}


def get_method(name: str) -> Method:
    return lookup(METHODS, "method", name)
