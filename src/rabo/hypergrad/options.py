"""The estimators' options as one typed, validated object (docs/algorithm.md §3): built
once per run (:mod:`rabo.experiment`) or per call (:func:`rabo.hypergradient`), checked
here only."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_positive

TERMS_MAX = 100_000
"""The most Neumann terms / CG iterations (README: beyond it a run cannot finish)."""
PERTURB = ("auto", "x", "y")
DIFFERENCES = ("central", "forward")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; expected one of "
                          f"{', '.join(allowed)}")


@dataclass(frozen=True)
class EstimatorOptions:
    """``terms`` Q (Neumann terms / CG iterations), ``step`` the Neumann step
    η_N (≤ 1/L_g), ``mu`` the finite-difference step μ, ``coords`` the size k of ``fd``'s
    cycling coordinate block (None: all), ``perturb`` which variable ``fd`` differences
    for J v ("auto": the one with fewer coordinates), ``difference`` the scheme of
    ``fd``/``fd-dir`` ("central": two gradients per product, O(μ²) error; "forward": one,
    against the gradient at the point computed once, O(μ) error). An estimator ignores
    the options it does not use.

    Checked on construction, a bad value a one-line :class:`~rabo.errors.ConfigError`;
    numbers normalized to ``int`` / ``float``."""

    terms: int = 10
    step: float = 0.1
    mu: float = 1e-3
    coords: int | None = None
    perturb: str = "auto"
    difference: str = "central"

    def __post_init__(self) -> None:
        check_positive("terms", self.terms, integer=True)
        if self.terms > TERMS_MAX:
            raise ConfigError(f"terms={self.terms!r} is not allowed; "
                              f"at most {TERMS_MAX:,}")
        check_positive("step", self.step)
        check_positive("mu", self.mu)
        if self.coords is not None:
            check_positive("coords", self.coords, integer=True)
            object.__setattr__(self, "coords", int(self.coords))
        _one_of("perturb", self.perturb, PERTURB)
        _one_of("difference", self.difference, DIFFERENCES)
        object.__setattr__(self, "terms", int(self.terms))
        object.__setattr__(self, "step", float(self.step))
        object.__setattr__(self, "mu", float(self.mu))
