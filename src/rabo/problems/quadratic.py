"""The quadratic test problem with a closed-form hypergradient (docs/algorithm.md §7).

    g_i = ½ yᵀA_i y − yᵀB_i x + λ/2‖y‖²,      f_i = ½‖y − c_i‖² + ½ xᵀD x

y*(x) = (Ā + λI)⁻¹ B̄ x and ∇F(x) = D x + B̄ᵀ(Ā + λI)⁻¹(y*(x) − c̄), bars meaning client means.
x and y have the same dimension and share one channel group, so a submodel keeps the same
coordinates of both. ``coupling="diagonal"``: A, B, D diagonal and shared, c_i differ, in
mirrored pairs (c_{2k+1} − c̄ = −(c_{2k} − c̄)) so that clients of equal capacity, which get
equal index sets, average to c̄ on every coordinate: a submodel's gradients on its kept
coordinates are then the full model's and RABO's fixed point is the true stationary point.
``coupling="dense"``: dense client-specific A_i, B_i, where submodels and local Hessians bias
the fixed point (the paper's Assumption 5 term).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import streams
from ..errors import ConfigError
from ..problem import BilevelProblem, Bound, Task
from ..submodel import Params, SubmodelIndex, vector_plan


class Quadratic(BilevelProblem):
    name = "quadratic"
    stackable = True
    defaults: ClassVar[dict[str, Any]] = {
        "rounds": 400, "inner_steps": 5, "inner_lr": 0.4, "outer_steps": 1, "outer_lr": 0.5,
        "terms": 20, "step": 0.45, "mu": 1e-3, "difference": "forward", "eval_every": 50}
    options: ClassVar[dict[str, Any]] = {
        "dim": 16, "coupling": "diagonal", "lam": 0.1, "heterogeneity": 1.0, "dtype": "float64"}
    ranges: ClassVar[dict[str, Bound]] = {"dim": Bound(1, 100_000), "lam": Bound(0, 1e6),
                                          "heterogeneity": Bound(0, 1e6)}
    MEMORY = 8 * 2**30
    """Bytes the clients' matrices A_i, B_i may take; more is refused before allocating."""

    def __init__(self, clients: int, seed: int = 0, data_dir: str | None = None,
                 **options: Any) -> None:
        opts = {**self.options, **options}
        if opts["coupling"] not in ("diagonal", "dense"):
            raise ConfigError(f"coupling {opts['coupling']!r} is not one of: diagonal, dense")
        if opts["dtype"] not in ("float32", "float64"):
            raise ConfigError(f"dtype {opts['dtype']!r} is not one of: float32, float64")
        if int(opts["dim"]) < 1:
            raise ConfigError(f"dim={opts['dim']!r} is not allowed; dim must be ≥ 1")
        need = 2 * clients * int(opts["dim"]) ** 2 * (8 if opts["dtype"] == "float64" else 4)
        if need > self.MEMORY:
            raise ConfigError(f"dim={opts['dim']!r} with {clients} clients needs "
                              f"{need / 2**30:.0f} GiB for the clients' matrices; at most "
                              f"{self.MEMORY / 2**30:.0f} GiB is allowed (clients × dim² ≤ "
                              f"{self.MEMORY // 16:,} in float64)")
        self.opts = opts
        self.num_clients = clients
        self.dtype = getattr(torch, opts["dtype"])
        d, m, lam = int(opts["dim"]), clients, float(opts["lam"])
        rng = streams.rng(seed, streams.QUADRATIC)
        c_bar = rng.uniform(1.0, 2.0, d)
        eps = rng.normal(0.0, float(opts["heterogeneity"]), (m, d))
        eps[1::2] = -eps[0:m - m % 2:2]          # mirrored pairs; an odd last client gets ε = 0
        if m % 2:
            eps[-1] = 0.0
        c = c_bar + eps
        if opts["coupling"] == "diagonal":
            a, b = np.diag(rng.uniform(1.0, 2.0, d)), np.diag(rng.uniform(0.5, 1.0, d))
            A, B = np.stack([a] * m), np.stack([b] * m)
        else:
            A = np.stack([self._spd(rng, d) for _ in range(m)])
            B = rng.normal(0.0, 0.6 / np.sqrt(d), (m, d, d)) + np.eye(d) * 0.75
        D = np.diag(rng.uniform(0.5, 1.0, d))
        t = lambda a: torch.tensor(a, dtype=self.dtype)
        self.A, self.B, self.c, self.D, self.lam = t(A), t(B), t(c), t(D), lam
        self.plan = vector_plan({"x": torch.zeros(d), "y": torch.zeros(d)},
                                {"x": "coord", "y": "coord"})

    @staticmethod
    def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        return (q * rng.uniform(1.0, 2.0, d)) @ q.T

    def init_params(self, seed: int) -> tuple[Params, Params]:
        d = int(self.opts["dim"])
        return {"x": torch.zeros(d, dtype=self.dtype)}, {"y": torch.zeros(d, dtype=self.dtype)}

    def sample(self, client: int, phase: str, rng: np.random.Generator,
               steps: int) -> list[Task]:
        """One task, the same at every step: g reads A_i and B_i, f reads c_i and D."""
        g_data = {"A": self.A[client], "B": self.B[client]}
        f_data = {"c": self.c[client], "D": self.D} if phase == "outer" else None
        return [Task((g_data,), f_data)]

    def restrict(self, batch: dict[str, Tensor], index: SubmodelIndex) -> dict[str, Tensor]:
        """The kept coordinates: rows and columns of the matrices, entries of the vector."""
        i = index["coord"]
        return {k: v[i][:, i] if v.dim() == 2 else v[i] for k, v in batch.items()}

    def cost_key(self, client: int) -> tuple:
        return ()

    def inner_loss(self, x: Params, y: Params, batch: dict[str, Tensor]) -> Tensor:
        yv, xv = y["y"], x["x"]
        return 0.5 * yv @ batch["A"] @ yv - yv @ batch["B"] @ xv + 0.5 * self.lam * yv @ yv

    def outer_loss(self, x: Params, y: Params, batch: dict[str, Tensor]) -> Tensor:
        r = y["y"] - batch["c"]
        return 0.5 * r @ r + 0.5 * x["x"] @ batch["D"] @ x["x"]

    # --- closed forms ------------------------------------------------------------------------
    def y_star(self, x: Tensor) -> Tensor:
        """y*(x) = (Ā + λI)⁻¹ B̄ x."""
        h = self.A.mean(0) + self.lam * torch.eye(len(x), dtype=self.dtype)
        return torch.linalg.solve(h, self.B.mean(0) @ x)

    def true_hypergradient(self, x: Tensor) -> Tensor:
        """∇F(x) = D x + B̄ᵀ(Ā + λI)⁻¹(y*(x) − c̄)."""
        h = self.A.mean(0) + self.lam * torch.eye(len(x), dtype=self.dtype)
        r = self.y_star(x) - self.c.mean(0)
        return self.D @ x + self.B.mean(0).T @ torch.linalg.solve(h, r)

    def round_metrics(self, x: Params, y: Params) -> dict[str, float]:
        xv = x["x"].to(self.dtype)
        return {"hypergrad_norm": float(self.true_hypergradient(xv).norm()),
                "inner_error": float((y["y"] - self.y_star(xv)).norm())}

    def config(self) -> dict[str, Any]:
        return dict(self.opts)
