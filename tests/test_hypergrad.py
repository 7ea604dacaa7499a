"""Hypergradient estimators (docs/algorithm.md §3) against closed forms and dense implicit
differentiation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rabo import RunConfig, build
from rabo.errors import ConfigError, UnknownNameError
from rabo.hypergrad import ESTIMATORS, EstimatorOptions, estimate, hypergradient
from rabo.problem import Objective, Task

IMPLICIT = ["neumann", "cg", "fd", "fd-dir"]
NO_DATA = Task((None,), None)  # the test problems hold their data themselves


def vec(params: dict, order: list[str]) -> torch.Tensor:
    return torch.cat([params[n].reshape(-1) for n in order])


def unvec(v: torch.Tensor, like: dict, order: list[str]) -> dict:
    out, start = {}, 0
    for n in order:
        out[n] = v[start:start + like[n].numel()].reshape(like[n].shape)
        start += like[n].numel()
    return out


def rel_err(estimate: torch.Tensor, target: torch.Tensor) -> float:
    return float((estimate.double() - target.double()).norm() / target.double().norm())


def dense_implicit(problem, x: dict, y: dict, xo: list[str], yo: list[str]) -> torch.Tensor:
    """∇_x f − J H⁻¹ ∇_y f from a dense Hessian of g over (x, y): the reference of eq 9."""
    xv, yv = vec(x, xo).detach(), vec(y, yo).detach()
    nx = len(xv)

    def g(z):
        return problem.inner_loss(unvec(z[:nx], x, xo), unvec(z[nx:], y, yo), None)

    def f(z):
        return problem.outer_loss(unvec(z[:nx], x, xo), unvec(z[nx:], y, yo), None)

    z = torch.cat([xv, yv])
    hess = torch.autograd.functional.hessian(g, z)
    grad_f = torch.autograd.functional.jacobian(f, z)
    hyy, jxy = hess[nx:, nx:], hess[:nx, nx:]
    return grad_f[:nx] - jxy @ torch.linalg.solve(hyy, grad_f[nx:])


# --- the quadratic of docs/algorithm.md §7 with two tensors in each of x and y -------------------
X_ORDER, Y_ORDER = ["a", "b"], ["u", "w"]


class Quadratic(Objective):
    """g = ½ yᵀA y − yᵀB x + λ/2‖y‖², f = ½‖y − c‖² + ½ xᵀD x on flat vectors."""

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 0, lam: float = 0.5):
        gen = torch.Generator().manual_seed(seed)

        def spd(n, lo, hi):
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            return q @ torch.diag(torch.linspace(lo, hi, n, dtype=torch.float64)) @ q.T

        self.A, self.D = spd(6, 1.0, 3.0), spd(4, 0.5, 2.0)
        self.B = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        self.c = torch.randn(6, generator=gen, dtype=torch.float64)
        self.lam = lam
        self.H = self.A + lam * torch.eye(6, dtype=torch.float64)
        self.step = 1.0 / float(torch.linalg.eigvalsh(self.H).max())
        self.dtype = dtype
        # y's dict order differs from the problem's own vector order, to pin dict flattening.
        self.x = {"a": torch.randn(2, generator=gen, dtype=dtype),
                  "b": torch.randn(2, generator=gen, dtype=dtype)}
        self.y = {"w": torch.randn(2, generator=gen, dtype=dtype),
                  "u": torch.randn(2, 2, generator=gen, dtype=dtype)}

    def _mats(self):
        return (m.to(self.dtype) for m in (self.A, self.B, self.D, self.c))

    def inner_loss(self, x, y, batch):
        A, B, _, _ = self._mats()
        xv, yv = vec(x, X_ORDER), vec(y, Y_ORDER)
        return 0.5 * yv @ A @ yv - yv @ B @ xv + 0.5 * self.lam * yv @ yv

    def outer_loss(self, x, y, batch):
        _, _, D, c = self._mats()
        xv, yv = vec(x, X_ORDER), vec(y, Y_ORDER)
        return 0.5 * (yv - c) @ (yv - c) + 0.5 * xv @ D @ xv

    def closed_form(self) -> torch.Tensor:
        """∇_x f − J H⁻¹ ∇_y f = D x + Bᵀ H⁻¹ (y − c): ∇_y g = H y − B x, so J = ∇_x∇_y g = −Bᵀ."""
        xv, yv = vec(self.x, X_ORDER).double(), vec(self.y, Y_ORDER).double()
        return self.D @ xv + self.B.T @ torch.linalg.solve(self.H, yv - self.c)


def quad_options(problem: Quadratic) -> dict:
    return {"terms": 80, "step": problem.step}


def test_quadratic_closed_form_matches_dense_implicit_gradient():
    q = Quadratic()
    dense = dense_implicit(q, q.x, q.y, X_ORDER, Y_ORDER)
    assert rel_err(dense, q.closed_form()) < 1e-12


@pytest.mark.parametrize("name", IMPLICIT)
def test_estimators_match_quadratic_closed_form(name):
    q = Quadratic()
    h = hypergradient(q, q.x, q.y, NO_DATA, name, **quad_options(q))
    assert rel_err(vec(h, X_ORDER), q.closed_form()) <= 1e-5


def test_cg_is_exact_in_dim_y_iterations():
    q = Quadratic()
    h = hypergradient(q, q.x, q.y, NO_DATA, "cg", terms=6)
    assert rel_err(vec(h, X_ORDER), q.closed_form()) <= 1e-10


def test_first_order_is_grad_x_f():
    q = Quadratic()
    h = hypergradient(q, q.x, q.y, NO_DATA, "first-order")
    # autograd and the matrix product sum in different orders (6.9e-18 apart on a Xeon)
    assert rel_err(vec(h, X_ORDER), q.D @ vec(q.x, X_ORDER)) <= 1e-12


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_zero_outer_gradient_in_y_leaves_grad_x_f(name):
    q = Quadratic()
    q.y = unvec(q.c.clone(), q.y, Y_ORDER)  # ∇_y f = y − c = 0, so v = 0 and ĥ = D x
    h = hypergradient(q, q.x, q.y, NO_DATA, name, **quad_options(q))
    assert rel_err(vec(h, X_ORDER), q.D @ vec(q.x, X_ORDER)) <= 1e-12


# --- logistic-regression hyperparameter problem ---------------------------------------------------
class LogisticHPO(Objective):
    """g = mean logistic loss on train + ½ Σ_j exp(x_j) y_j², f = mean logistic loss on val."""

    def __init__(self, seed: int = 1, d: int = 5):
        gen = torch.Generator().manual_seed(seed)
        w_true = torch.randn(d, generator=gen, dtype=torch.float64)
        self.a_train = torch.randn(40, d, generator=gen, dtype=torch.float64)
        self.a_val = torch.randn(30, d, generator=gen, dtype=torch.float64)
        self.b_train, self.b_val = (
            torch.sign(a @ w_true + 0.5 * torch.randn(len(a), generator=gen, dtype=torch.float64))
            for a in (self.a_train, self.a_val))
        strength = 0.2 + 0.3 * torch.rand(d, generator=gen, dtype=torch.float64)
        self.x = {"log_l2": strength.log()}
        self.y = {"weight": torch.zeros(d, dtype=torch.float64)}

    @staticmethod
    def _logistic(a, b, w):
        return torch.nn.functional.softplus(-b * (a @ w)).mean()

    def inner_loss(self, x, y, batch):
        w = y["weight"]
        penalty = 0.5 * (x["log_l2"].exp() * w * w).sum()
        return self._logistic(self.a_train, self.b_train, w) + penalty

    def outer_loss(self, x, y, batch):
        return self._logistic(self.a_val, self.b_val, y["weight"])


@pytest.fixture(scope="module")
def logistic():
    p = LogisticHPO()
    hess = torch.autograd.functional.hessian(
        lambda w: p.inner_loss(p.x, {"weight": w}, None), p.y["weight"])
    p.step = 1.0 / float(torch.linalg.eigvalsh(hess).max())
    w = p.y["weight"].clone().requires_grad_(True)
    for _ in range(300):  # approximate inner solution
        (gw,) = torch.autograd.grad(p.inner_loss(p.x, {"weight": w}, None), w)
        w = (w - p.step * gw).detach().requires_grad_(True)
    p.y = {"weight": w.detach()}
    p.exact = dense_implicit(p, p.x, p.y, ["log_l2"], ["weight"])
    return p


@pytest.mark.parametrize("name", IMPLICIT)
def test_estimators_match_logistic_implicit_gradient(logistic, name):
    h = hypergradient(logistic, logistic.x, logistic.y, NO_DATA, name, terms=60,
                      step=logistic.step)
    assert rel_err(h["log_l2"], logistic.exact) <= 1e-3


@pytest.mark.parametrize("name", ["fd", "fd-dir"])
def test_forward_differences_are_exact_on_the_quadratic_and_close_on_logistic(logistic, name):
    # g quadratic in y: a forward difference of ∇_y g is exact up to rounding, as is a central one
    q = Quadratic()
    h = hypergradient(q, q.x, q.y, NO_DATA, name, difference="forward", **quad_options(q))
    assert rel_err(vec(h, X_ORDER), q.closed_form()) <= 1e-5
    # logistic loss: O(μ) truncation instead of O(μ²), still within the 1e-3 of docs/algorithm.md §3
    h = hypergradient(logistic, logistic.x, logistic.y, NO_DATA, name, terms=60,
                      step=logistic.step, difference="forward", mu=1e-5)
    assert rel_err(h["log_l2"], logistic.exact) <= 1e-3


def test_forward_differences_take_fewer_flops_than_central():
    # central: two gradients of g per HVP and two evaluations for J v; forward: one per HVP
    # and one, against g(x, y) evaluated once (the cost test pins RAFBO ≤ RABO on few-shot)
    p = HeadOnBackbone()
    counts = {}
    for difference in ("central", "forward"):
        with FlopCounterMode(display=False) as counter:
            hypergradient(p, p.x, p.y, NO_DATA, "fd-dir", terms=5, step=0.5,
                          difference=difference)
        counts[difference] = counter.get_total_flops()
    assert counts["forward"] < counts["central"]


# --- fd's coordinate blocks --------------------------------------------------------------------
@pytest.mark.parametrize("perturb,k", [("x", 3), ("y", 4)])  # k does not divide n: blocks wrap
def test_fd_blocks_average_to_full_estimate_over_a_cycle(perturb, k):
    q = Quadratic()
    opts = quad_options(q)
    n = 4 if perturb == "x" else 6
    full = vec(hypergradient(q, q.x, q.y, NO_DATA, "fd", perturb=perturb, **opts), X_ORDER)
    cycle = n // math.gcd(n, k)
    blocks = [vec(hypergradient(q, q.x, q.y, NO_DATA, "fd", perturb=perturb, coords=k, t=t,
                                **opts), X_ORDER) for t in range(cycle)]
    assert rel_err(torch.stack(blocks).mean(0), full) <= 1e-8
    assert rel_err(blocks[0], full) > 1e-3  # one block alone is a different estimate


def test_fd_perturb_x_and_y_agree_with_neumann():
    q = Quadratic()
    opts = quad_options(q)
    ref = vec(hypergradient(q, q.x, q.y, NO_DATA, "neumann", **opts), X_ORDER)
    for perturb in ("auto", "x", "y"):
        h = hypergradient(q, q.x, q.y, NO_DATA, "fd", perturb=perturb, **opts)
        assert rel_err(vec(h, X_ORDER), ref) <= 1e-8


# --- a network through functional_call: backbone x, linear head y, batch-statistics BN --------
class HeadOnBackbone(Objective):
    """g = CE(head(backbone(a_s))) + λ/2‖y‖², f = CE on a query set; x = backbone, y = head."""

    def __init__(self, seed: int = 2, lam: float = 0.5):
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8, track_running_stats=False),
            torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        params = {n: p.detach() for n, p in self.net.named_parameters()}
        self.x = {n: p for n, p in params.items() if not n.startswith("3.")}
        self.y = {n: p for n, p in params.items() if n.startswith("3.")}
        gen = torch.Generator().manual_seed(seed)
        self.data = [torch.randn(12, 6, generator=gen, dtype=torch.float64),
                     torch.randint(0, 3, (12,), generator=gen)] * 2
        self.data[2] = torch.randn(12, 6, generator=gen, dtype=torch.float64)
        self.lam = lam

    def _loss(self, x, y, a, labels):
        logits = torch.func.functional_call(self.net, {**x, **y}, (a,))
        return torch.nn.functional.cross_entropy(logits, labels)

    def inner_loss(self, x, y, batch):
        return self._loss(x, y, *self.data[:2]) + 0.5 * self.lam * sum(
            (p * p).sum() for p in y.values())

    def outer_loss(self, x, y, batch):
        return self._loss(x, y, *self.data[2:])


@pytest.mark.parametrize("name,perturb", [("neumann", "auto"), ("fd", "auto"), ("fd", "x"),
                                          ("fd-dir", "auto")])
def test_estimators_on_a_network_match_cg(name, perturb):
    p = HeadOnBackbone()
    reference = hypergradient(p, p.x, p.y, NO_DATA, "cg", terms=50)
    h = hypergradient(p, p.x, p.y, NO_DATA, name, terms=60, step=0.5, perturb=perturb)
    assert rel_err(torch.cat([v.reshape(-1) for v in h.values()]),
                   torch.cat([v.reshape(-1) for v in reference.values()])) <= 1e-3


# --- dtype, shapes, errors, FLOP counting -----------------------------------------------------
@pytest.mark.parametrize("name,perturb", [(n, "auto") for n in IMPLICIT + ["first-order"]]
                         + [("fd", "y")])
def test_float32_in_float32_out(name, perturb):
    q = Quadratic(dtype=torch.float32)
    h = hypergradient(q, q.x, q.y, NO_DATA, name, perturb=perturb, **quad_options(q))
    assert all(v.dtype == torch.float32 for v in h.values())
    target = q.closed_form() if name != "first-order" else q.D @ vec(q.x, X_ORDER).double()
    assert rel_err(vec(h, X_ORDER), target) <= 1e-3


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_result_has_x_keys_and_shapes_and_no_grad(name):
    q = Quadratic()
    x = {n: p.clone().requires_grad_(True) for n, p in q.x.items()}
    y = {n: p.clone().requires_grad_(True) for n, p in q.y.items()}
    with torch.no_grad():  # the estimators turn autograd on themselves
        h = hypergradient(q, x, y, NO_DATA, name, **quad_options(q))
    assert list(h) == list(x)
    assert all(h[n].shape == x[n].shape and not h[n].requires_grad for n in x)
    assert all(p.grad is None for p in [*x.values(), *y.values()])


@pytest.mark.parametrize("kwargs,error,text", [
    ({"estimator": "newton"}, UnknownNameError, "'newton'"),
    ({"terms": 0}, ConfigError, "terms=0"),
    ({"terms": 2.5}, ConfigError, "terms=2.5"),
    ({"mu": -1}, ConfigError, "mu=-1"),
    ({"step": float("nan")}, ConfigError, "step=nan"),
    ({"coords": 0}, ConfigError, "coords=0"),
    ({"perturb": "z"}, ConfigError, "perturb='z'"),
    ({"difference": "backward"}, ConfigError, "difference='backward'"),
    ({"terms": 100_001}, ConfigError, "terms=100001 is not allowed; at most 100,000"),
    ({"step": True}, ConfigError, "step=True"),
    ({"t": 1.5}, ConfigError, "t=1.5"),
])
def test_bad_options_raise_config_errors(kwargs, error, text):
    q = Quadratic()
    with pytest.raises(error, match=text.replace("(", r"\(")):
        hypergradient(q, q.x, q.y, NO_DATA, **kwargs)


def test_flop_counter_sees_every_estimator():
    q = Quadratic()  # matrix products: FlopCounterMode counts mm/bmm (not mv or dot)
    flops = {}
    for name in ESTIMATORS:
        with FlopCounterMode(display=False) as counter:
            hypergradient(q, q.x, q.y, NO_DATA, name, terms=10, step=q.step)
        flops[name] = counter.get_total_flops()
    assert all(v > 0 for v in flops.values())
    assert flops["first-order"] < min(flops[n] for n in IMPLICIT)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimate_returns_the_outer_loss_it_evaluated(name):
    problem = Quadratic()
    options = EstimatorOptions(**quad_options(problem))
    h, f = estimate(problem, problem.x, problem.y, NO_DATA, name, options)
    assert f == pytest.approx(float(problem.outer_loss(problem.x, problem.y, None)), rel=1e-12)
    assert all(torch.equal(h[n], g) for n, g in
               hypergradient(problem, problem.x, problem.y, NO_DATA, name,
                             **quad_options(problem)).items())


def test_options_normalize_numbers_to_int_and_float():
    options = EstimatorOptions(np.int64(3), np.float32(0.5), 1, np.int16(2))
    assert (options.terms, options.step, options.mu, options.coords) == (3, 0.5, 1.0, 2)
    assert [type(v) for v in (options.terms, options.step, options.mu, options.coords)] == \
        [int, float, float, int]


@pytest.mark.parametrize("field,value", [("terms", 0), ("mu", float("inf")), ("coords", 0),
                                         ("perturb", "z"), ("difference", "backward")])
def test_a_run_config_and_the_public_call_refuse_an_option_with_one_message(field, value):
    """One validator: ``rabo run``'s config and ``rabo.hypergradient`` say the same thing."""
    with pytest.raises(ConfigError) as from_config:
        build(RunConfig(problem="quadratic", **{field: value}))
    q = Quadratic()
    with pytest.raises(ConfigError) as from_call:
        hypergradient(q, q.x, q.y, NO_DATA, **{field: value})
    assert str(from_config.value) == str(from_call.value)
    assert str(from_call.value).startswith(f"{field}={value!r} is not allowed")


def test_a_run_carries_its_estimator_options_to_the_clients():
    exp = build(RunConfig(problem="quadratic", terms=7, step=0.25, mu=0.01, coords=3,
                          perturb="y", difference="forward"))
    assert exp.settings.estimator_options == EstimatorOptions(7, 0.25, 0.01, 3, "y", "forward")
