"""Loss tuning on long-tailed digits: the VS loss, the balanced objective, and that tuning helps."""

import pytest
import torch

from rabo.config import RunConfig
from rabo.experiment import build
from rabo.problems.losstuning import balanced_cross_entropy, vs_loss
from rabo.runtime.loop import run


def test_vs_loss_at_zero_is_cross_entropy_and_weights_reweight():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    zero = {k: torch.zeros(3) for k in ("log_delta", "iota", "log_w")}
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(vs_loss(logits, labels, zero), ce)
    # w = 3·softmax(log_w): log_w = (log 2, 0, 0) gives w = (1.5, 0.75, 0.75)
    weighted = dict(zero, log_w=torch.tensor([torch.log(torch.tensor(2.0)), 0.0, 0.0]))
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(vs_loss(logits, labels, weighted), (1.5 * per[0] + 0.75 * per[1]) / 2)


def test_balanced_cross_entropy_averages_class_means():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1])
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per[:3].mean() + per[3:].mean()) / 2
    assert torch.allclose(balanced_cross_entropy(logits, labels, 3), expected)


@pytest.mark.slow
def test_tuning_the_loss_beats_plain_cross_entropy_on_average():
    def final(method: str, seed: int) -> float:
        state = run(build(RunConfig(problem="losstuning", method=method, seed=seed)), None,
                    progress=False)
        return state.history[-1]["accuracy"]

    seeds = (0, 1, 2)
    tuned = sum(final("fedmbo", s) for s in seeds) / len(seeds)
    plain = sum(final("fedavg", s) for s in seeds) / len(seeds)
    assert tuned > plain


def test_vs_loss_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 0])
    x = {k: 0.3 * torch.randn(4, generator=g, dtype=torch.float64)
         for k in ("log_delta", "iota", "log_w")}
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    grads = torch.autograd.grad(vs_loss(logits, labels, leaves), list(leaves.values()))
    eps = 1e-6
    for (name, value), grad in zip(x.items(), grads):
        for c in range(4):
            plus, minus = dict(x), dict(x)
            plus[name] = value.clone()
            plus[name][c] += eps
            minus[name] = value.clone()
            minus[name][c] -= eps
            fd = (vs_loss(logits, labels, plus) - vs_loss(logits, labels, minus)) / (2 * eps)
            assert abs(float(fd) - float(grad[c])) < 1e-8, (name, c)


def test_long_tailed_training_set_has_imbalance_ratio_rho():
    from rabo.problems.losstuning import LossTuning

    problem = LossTuning(clients=10, seed=0)
    labels = problem.data.labels
    counts = torch.bincount(torch.as_tensor(
        [int(labels[i]) for tr, va in problem.data.clients for i in list(tr) + list(va)]))
    # n_c = ⌊n_max ρ^(−c/(C−1))⌋ with ρ = 10: n_0 / n_9 = ⌊124⌋ / ⌊12.4⌋
    assert counts[0] == 124 and counts[-1] == 12
    assert counts[0] / counts[-1] == pytest.approx(10.0, rel=0.04)
    assert all(counts[c] >= counts[c + 1] for c in range(9))


def test_the_constructor_keeps_its_options_and_config_resolves_rho_and_model():
    """rho 0 and model "auto" stand for the data set's defaults: config() (config.json) holds
    what they resolved to, while the options the problem was given stay as given."""
    from rabo.problems.losstuning import DEFAULT_MODEL, DEFAULT_RHO, LossTuning

    problem = LossTuning(5, seed=0)
    assert problem.opts["rho"] == 0.0 and problem.opts["model"] == "auto"
    resolved = problem.config()
    assert resolved["rho"] == DEFAULT_RHO["digits"] and resolved["model"] == DEFAULT_MODEL["digits"]
    assert list(resolved) == list(problem.opts)
