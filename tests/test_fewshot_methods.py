"""ProtoNet and first-order MAML as few-shot problem heads (docs/algorithm.md §5 `protonet`,
`maml`)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from rabo.config import RunConfig, packaged_config
from rabo.cost import measure
from rabo.errors import ConfigError, UnknownNameError
from rabo.experiment import build
from rabo.hypergrad import hypergradient
from rabo.models import rms_scaled
from rabo.problems.fewshot import FewShot
from rabo.problems.fewshot_data import synthetic_task
from rabo.problems.fewshot_heads import HEADS, LinearHead
from rabo.runtime.loop import run


def synthetic(**options):
    return FewShot(clients=2, source="synthetic", **options)


def test_the_head_mode_is_one_object_chosen_by_name():
    for name, head in HEADS.items():
        problem = synthetic(head=name, ways=3)
        _, y = problem.init_params(0)
        assert type(problem.head) is head and problem.stackable == (name == "linear")
        assert {n: tuple(p.shape) for n, p in y.items()} == (
            {"head.weight": (3, 64), "head.bias": (3,)} if name == "linear" else {})
    with pytest.raises(UnknownNameError,
                       match="unknown fewshot head 'svm'; allowed: linear, meta, prototype"):
        synthetic(head="svm")


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    problem = synthetic(head="prototype", ways=2, shots=2)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])  # c = (1,0), (0,3)
    query = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    task = {"support_labels": torch.tensor([0, 0, 1, 1]), "query_labels": torch.tensor([0, 1])}
    # query 0: distances² 1 and 5; query 1: 10 and 0
    expected = (math.log1p(math.exp(-4.0)) + math.log1p(math.exp(-10.0))) / 2
    loss = problem.outer_loss_from((support, query), {}, task)
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # float32


def test_protonet_has_no_head_and_is_evaluated_with_prototypes(monkeypatch):
    problem = synthetic(head="prototype", ways=3, shots=1)
    x, y = problem.init_params(0)
    assert y == {} and not any(n.startswith("head.") for n in x)
    task = synthetic_task(np.random.default_rng(0), 3, 1, 19, 28)
    task = {**task, "query": task["support"], "query_labels": task["support_labels"]}
    monkeypatch.setattr(LinearHead, "fitted", lambda *a: pytest.fail("fitted a head"))
    # each query is its class's prototype
    assert problem.episode_accuracies(x, y, [task]).tolist() == [1.0]


@pytest.mark.parametrize("shots", [1, 5])
def test_evaluation_head_fit_lowers_the_support_loss(shots):
    """Regression: eval_lr 0.5 made the evaluation's head fit diverge on Conv-4 features
    (support loss 1.61 → 10.3 at 5w5s), which cost 5-shot accuracy 26 points."""
    problem = synthetic(ways=5, shots=shots)
    x, y = problem.init_params(0)
    task = synthetic_task(np.random.default_rng(0), 5, shots, 20 - shots, 28)
    with torch.no_grad():
        feats = problem.features(x, task)
    heads = problem.head.fitted(feats[0][None], task["support_labels"][None], y)
    start = float(problem.inner_loss_from(feats, y, task))
    end = float(problem.inner_loss_from(feats, {n: p[0] for n, p in heads.items()}, task))
    assert start == pytest.approx(math.log(5), rel=1e-5) and end < 0.75 * start


def test_batched_evaluation_gives_the_per_episode_loops_logits_in_order(monkeypatch):
    """Issue 24: the heads of a chunk of episodes fitted together (each on its own g) and the
    features of every episode set with its own batch statistics give the per-episode loop's
    query logits, episode by episode, across chunk borders (chunks of 3: 3 + 3 + 1)."""
    from rabo.bench.fewshot_eval import loop_accuracies, loop_query_logits
    from rabo.problems import fewshot

    monkeypatch.setattr(fewshot, "EVAL_CHUNK", 3)
    problem = synthetic(ways=5, shots=1, eval_steps=10)
    x, y = problem.init_params(0)
    torch.manual_seed(0)
    y = {n: 0.1 * torch.randn_like(p) for n, p in y.items()}  # heads start at the global y
    tasks = list(problem.test_tasks(7, seed=3))
    batched = problem.episode_accuracies(x, y, tasks, len(tasks))
    loop = loop_accuracies(problem, x, y, tasks)
    assert len(set(loop.tolist())) > 2  # the episodes differ: the order is tested too
    np.testing.assert_allclose(batched, loop, rtol=0, atol=1e-6)
    logits = problem.query_logits(x, y, tasks[3:6])
    for e, task in enumerate(tasks[3:6]):
        torch.testing.assert_close(logits[e], loop_query_logits(problem, x, y, task),
                                   rtol=1e-5, atol=1e-5)


def test_test_episodes_are_seeded_and_the_same_at_every_evaluation():
    problem = synthetic(ways=3, shots=2)
    first, again = (list(problem.test_tasks(2, seed=5)) for _ in range(2))
    other = next(problem.test_tasks(1, seed=6))
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a["query"], b["query"], rtol=0, atol=0)
    assert first[0]["support"].shape == (6, 1, 28, 28)
    assert float((first[0]["query"] - other["query"]).abs().max()) > 1


def _head_hessian(problem, feats, y, task):
    """∇²_yy g at y on fixed features, as one dense matrix over the flattened head."""
    sizes = [v.numel() for v in y.values()]

    def g(flat):
        parts = dict(zip(y, (p.view(v.shape) for p, v in zip(flat.split(sizes), y.values()))))
        return problem.inner_loss_from(feats, parts, task)

    return torch.autograd.functional.hessian(g, torch.cat([v.flatten() for v in y.values()]))


@pytest.mark.parametrize("ways", [5, 20])
def test_head_hessian_at_the_initial_head_is_the_closed_form(ways):
    """At y = 0 the softmax is uniform, so ∇²_yy g = (I/N − 11ᵀ/N²) ⊗ E[φ̃φ̃ᵀ] + λI with
    φ̃ = (φ, 1), and λ_max = λ_max(E φ̃φ̃ᵀ)/N + λ: an N-way head needs steps ∝ N to move as a
    5-way one does, the rule the config's 20-way tables follow."""
    problem = synthetic(ways=ways, shots=2)
    _, y = problem.init_params(0)
    assert list(y) == ["head.weight", "head.bias"] and all(not p.any() for p in y.values())
    torch.manual_seed(0)
    d = problem.backbone.out_features
    feats = rms_scaled(torch.relu(torch.randn(2 * ways, d) + 0.5), 1.5)
    task = {"support_labels": torch.arange(ways).repeat_interleave(2)}
    hessian = _head_hessian(problem, (feats, None), y, task).double()
    tilde = torch.cat([feats, torch.ones(2 * ways, 1)], 1).double()
    moment = tilde.T @ tilde / len(tilde)
    softmax = torch.eye(ways, dtype=torch.double) / ways - 1.0 / ways**2
    lam = float(problem.opts["lam"])
    # kron's index (c, j) is c·(d+1) + j; the flat head lists the weights (c, j < d), then biases
    order = [c * (d + 1) + j for c in range(ways) for j in range(d)] \
        + [c * (d + 1) + d for c in range(ways)]
    expected = torch.kron(softmax, moment)[order][:, order] + lam * torch.eye(len(order))
    assert torch.allclose(hessian, expected, atol=1e-5)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    assert top == pytest.approx(float(torch.linalg.eigvalsh(moment)[-1]) / ways + lam, rel=1e-5)


def test_twenty_way_head_steps_are_the_five_way_ones_scaled_by_n():
    """The packaged fewshot.toml's 20-way tables keep η·λ_max of the head steps (η_y, η_N, the
    evaluation's) at their 5-way values: λ_max ∝ 1/N (the closed form above)."""
    file = packaged_config("fewshot")
    base = {**file.base, **file.base["problem_options"]}
    for name in ("20w1s", "20w5s"):
        table = file.settings[name]
        table = {**table, **table.get("problem_options", {})}
        for key in ("inner_lr", "step", "eval_lr"):
            assert table[key] == pytest.approx(base[key] * 20 / 5), (name, key)


def test_default_neumann_step_is_stable_on_trained_feature_scales():
    """Regression: at η_N = 0.1 the Neumann series diverges once trained Conv-4 features reach
    ‖φ‖ ≈ 12–13 (λ_max(∇²_yy g) 21–25 measured on training tasks). Here: non-negative features
    of norm 13, 5w5s; every Neumann term must shrink."""
    from rabo.hypergrad.neumann import neumann_solve

    problem = synthetic(ways=5, shots=5)
    _, y = problem.init_params(0)
    torch.manual_seed(0)
    feats = torch.relu(torch.randn(25, problem.backbone.out_features) + 1.2)
    feats = 13 * feats / feats.norm(dim=1, keepdim=True)
    task = {"support_labels": torch.arange(5).repeat_interleave(5)}
    hessian = _head_hessian(problem, (feats, None), y, task)
    lam = float(torch.linalg.eigvalsh(hessian)[-1])
    step, terms = FewShot.defaults["step"], FewShot.defaults["terms"]
    assert 20 < lam < 30 and step * lam < 1  # 0.1 · λ > 2: divergent
    b = torch.randn(len(hessian))
    v = neumann_solve(lambda u: hessian @ u, b, terms, step)
    assert float(v.norm()) <= step * terms * float(b.norm())


def test_first_order_gradient_of_meta_is_the_fomaml_update_from_a_zero_head():
    torch.manual_seed(0)
    problem = synthetic(head="meta", ways=2, shots=1, maml_steps=2, maml_lr=0.3)
    x, y = problem.init_params(0)
    assert y == {} and not any(n.startswith("head.") for n in x)  # the head is per task
    task = synthetic_task(np.random.default_rng(1), 2, 1, 3, 28)

    def loss(params, images, labels):  # by hand: Conv-4, features to RMS 1.5, the head
        feats = functional_call(problem.backbone, {n.removeprefix("backbone."): p for n, p in
                                                   params.items() if n.startswith("backbone.")},
                                (images,)).flatten(1)
        feats = 1.5 * feats / feats.pow(2).mean(1, keepdim=True).sqrt()
        return F.cross_entropy(F.linear(feats, params["head.weight"], params["head.bias"]), labels)

    d = problem.backbone.out_features
    adapted = {**x, "head.weight": torch.zeros(2, d), "head.bias": torch.zeros(2)}
    adapted = {n: p.clone().requires_grad_(True) for n, p in adapted.items()}
    for _ in range(2):
        grads = torch.autograd.grad(loss(adapted, task["support"], task["support_labels"]),
                                    list(adapted.values()))
        adapted = {n: (p - 0.3 * g).detach().requires_grad_(True)
                   for (n, p), g in zip(adapted.items(), grads)}
    assert float(adapted["head.weight"].detach().abs().sum()) > 0  # adaptation moved the zero head
    expected = dict(zip(adapted, torch.autograd.grad(
        loss(adapted, task["query"], task["query_labels"]), list(adapted.values()))))
    h = hypergradient(problem, x, y, problem.as_task(task), "first-order")
    assert set(h) == set(x)
    for name in x:
        torch.testing.assert_close(h[name], expected[name], rtol=1e-4, atol=1e-6)
    assert float(h["backbone.blocks.0.conv.weight"].abs().sum()) > 0


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_one_round_trains_x_only_with_fedavg(method):
    config = RunConfig(problem="fewshot", method=method, rounds=1, clients=2, capacities=[1.0],
                       problem_options={"source": "synthetic", "tasks": 1})
    exp = build(config)
    x0, _ = exp.problem.init_params(0)
    state = run(exp, progress=False)
    (metrics,) = state.history
    assert state.y == {} and metrics["inner_loss"] is None and metrics["flops_inner"] == 0
    assert metrics["cover_x"] == 2 and metrics["outer_loss"] > 0
    name = "backbone.blocks.3.conv.weight"
    assert float((state.x[name] - x0[name]).abs().max()) > 0


def test_last_round_evaluates_final_episodes(monkeypatch):
    seen = []
    monkeypatch.setattr(FewShot, "evaluate_episodes",
                        lambda self, x, y, episodes: seen.append(episodes) or {})
    config = RunConfig(problem="fewshot", method="protonet", rounds=2, eval_every=1, clients=2,
                       capacities=[1.0], problem_options={"source": "synthetic", "tasks": 1,
                                                          "eval_episodes": 7,
                                                          "final_episodes": 11})
    run(build(config), progress=False)
    assert seen == [7, 11]


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_fewshot_only_methods_name_the_problem(method):
    with pytest.raises(ConfigError, match=f"method '{method}' runs only on problem fewshot, "
                                          f"not 'quadratic'"):
        build(RunConfig(problem="quadratic", method=method))


def test_head_options_that_contradict_the_method_or_estimator_are_config_errors():
    base = RunConfig(problem="fewshot", problem_options={"source": "synthetic"})
    with pytest.raises(ConfigError, match="problem.head='linear' contradicts method 'protonet'"):
        build(RunConfig(problem="fewshot", method="protonet",
                        problem_options={"source": "synthetic", "head": "linear"}))
    with pytest.raises(ConfigError, match="estimator 'neumann' needs an inner variable y"):
        build(RunConfig(**{**base.to_dict(), "method": "rabo",
                           "problem_options": {"source": "synthetic", "head": "prototype"}}))


def test_cost_report_lists_only_methods_defined_on_the_problem():
    methods = [r["method"] for r in measure(RunConfig(problem="quadratic", clients=5))]
    assert "rabo" in methods and "protonet" not in methods and "maml" not in methods


def _head_curvature(problem, x, y, task):
    """λ_max(∇²_yy g) at y, from the exact Hessian."""
    with torch.no_grad():
        feats = problem.features(x, task)
    return float(torch.linalg.eigvalsh(_head_hessian(problem, feats, y, task))[-1])


@pytest.mark.parametrize("rms", [1.0, FewShot.options["feature_rms"], 0.0])
def test_feature_rms_bounds_the_head_curvature_whatever_the_backbone_scale(rms):
    """Regression for the few-shot collapse: a trained backbone's last BN gain grew, and with it
    ‖φ‖² and λ_max(∇²_yy g), until the fixed head steps diverged. Scaling the last BN's weight
    and bias by 5 scales φ by 5 (ReLU and max-pool are positively homogeneous): λ_max grows
    ~25-fold without ``feature_rms`` and not at all with it, within ½(d·rms² + 1) + λ."""
    problem = synthetic(ways=5, shots=5, feature_rms=rms)
    x, y = problem.init_params(0)
    task = synthetic_task(np.random.default_rng(0), 5, 5, 15, 28)
    grown = {n: p * 5 if n.startswith("backbone.blocks.3.bn.") else p for n, p in x.items()}
    before, after = _head_curvature(problem, x, y, task), _head_curvature(problem, grown, y, task)
    if rms:
        d, lam = problem.backbone.out_features, float(problem.opts["lam"])
        assert after == pytest.approx(before, rel=1e-4)
        assert after <= 0.5 * (d * rms**2 + 1) + lam
        assert FewShot.defaults["step"] * after < 1  # the default η_N stays stable
        if rms == 1.0:  # at the default 1.5, η_y·λ_max is 2.3 at y = 0 (uniform softmax)
            assert FewShot.defaults["inner_lr"] * after < 2
    else:
        assert after > 20 * before  # the bias column does not grow with φ


@pytest.mark.parametrize("backbone, rms", [("conv4", 1.5), ("resnet12", 0.53)])
def test_feature_rms_defaults_to_conv4_s_feature_norm_on_every_backbone(backbone, rms):
    """Regression: ResNet-12's 512 features at Conv-4's RMS 1.5 (norm 34, head curvature bound
    8× Conv-4's) diverged from round 2. Unless given, feature_rms is 1.5·√(64/d) to two
    decimals, so every backbone's features have Conv-4's norm 1.5·√64 = 12, also through the
    packaged settings `rabo run fewshot` uses; the resolved value is what config() records, and
    a given value wins."""
    from rabo.cli import config_from_args, make_parser

    problem = synthetic(backbone=backbone)
    assert problem.opts["feature_rms"] == rms and problem.config()["feature_rms"] == rms
    x, _ = problem.init_params(0)
    task = synthetic_task(np.random.default_rng(0), 5, 1, 3, 28)
    with torch.no_grad():
        support, _ = problem.features(x, {"support": task["support"]})
    norms = torch.linalg.vector_norm(support, dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 12.0), rtol=2e-3, atol=0)
    assert synthetic(backbone=backbone, feature_rms=0.7).config()["feature_rms"] == 0.7
    args = make_parser().parse_args(["run", "fewshot", "--set", f"problem.backbone={backbone}",
                                     "--set", "problem.source=synthetic"])
    assert build(config_from_args(args)).config.problem_options["feature_rms"] == rms


def test_rms_scaled_rows_have_the_target_rms_and_zero_rows_stay_zero():
    from rabo.models import rms_scaled

    feats = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    out = rms_scaled(feats, 2.0)
    torch.testing.assert_close(out[0], torch.tensor([3.0, 4.0]) * 2 / math.sqrt(12.5))
    torch.testing.assert_close(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], torch.tensor([2.0, -2.0]))
    assert rms_scaled(feats, 0.0) is feats
    with pytest.raises(ConfigError, match="feature_rms=-1.0 must be a number ≥ 0"):
        synthetic(feature_rms=-1.0)
