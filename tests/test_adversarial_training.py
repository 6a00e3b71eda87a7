"""Adversarial training: where the training inputs lie, each method's step and loss, the eps
ramp, TRADES at beta 0, param validation at suite load, and a tiny real PGD-AT run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robench.attacks import create_attack
from robench.data import Split
from robench.defenses import DefenseContext
from robench.defenses.adversarial_training import (
    AdversarialLoss,
    AdversarialTraining,
    AdversarialTrainingParams,
    fresh_init,
)
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.models import LeNet5
from robench.plan import resolve_raw
from robench.training import TrainConfig, accuracy, train

METHODS = ["fgsm", "fgsm_rs", "pgd", "trades"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Batches here are tiny: a second intra-op thread only adds synchronisation, which on a
    busy two-core machine makes a 2 s test take 15 s. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder(nn.Module):
    """Wraps a model and keeps every input it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.model(x)


class ConstantGradient(nn.Module):
    """Two logits (s, 0) with s = 0.01 * sum(x): for label 1 the CE gradient w.r.t. every
    pixel is positive wherever x is, so the sign of each attack step is known (+1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.01 * x.flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x[:, :, :4] = 0.0   # pixels at the ends of [0, 1], where clipping must act
    x[:, :, -4:] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def _lenet(seed=0):
    torch.manual_seed(seed)
    return LeNet5()


def _loss(method, steps_per_epoch=10, seed=1, **params):
    return AdversarialLoss(AdversarialTrainingParams(method=method, warmup_epochs=0, **params),
                           steps_per_epoch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_every_input_the_loss_sees_is_within_eps_and_in_unit_range(method):
    x, y = _batch()
    model = Recorder(_lenet())
    eps = 0.3
    loss = _loss(method, eps=eps)(model, x, y)
    assert loss.requires_grad and torch.isfinite(loss)
    assert len(model.inputs) >= 2
    for seen in model.inputs:
        assert seen.shape == x.shape
        assert (seen - x).abs().max() <= eps + 1e-6
        assert seen.min() >= 0.0 and seen.max() <= 1.0
    # the adversarial input really moved: most of the way to the ball's boundary
    assert (model.inputs[-1] - x).abs().max() > 0.5 * eps


@pytest.mark.parametrize("method", METHODS)
def test_loss_is_the_methods_objective_on_the_crafted_input(method):
    x, y = _batch()
    model = Recorder(_lenet())
    loss = _loss(method, eps=0.3, steps=3)(model, x, y) if method in ("pgd", "trades") \
        else _loss(method, eps=0.3)(model, x, y)
    x_adv = model.inputs[-1]
    net = model.model
    with torch.no_grad():
        if method == "fgsm":
            # the harness's own FGSM attack crafts the same example
            expected_adv = create_attack("fgsm", net)(x, y, 0.3)
            assert torch.equal(x_adv, expected_adv)
            expected = 0.5 * F.cross_entropy(net(x), y) + 0.5 * F.cross_entropy(net(x_adv), y)
            assert len(model.inputs) == 3  # one crafting pass, then clean + adversarial
        elif method == "trades":
            logits = net(x)
            kl = F.kl_div(F.log_softmax(net(x_adv), 1), F.softmax(logits, 1),
                          reduction="batchmean")
            expected = F.cross_entropy(logits, y) + 6.0 * kl
            assert kl > 0
            assert len(model.inputs) == 1 + 3 + 2  # clean target, 3 KL steps, 2 training passes
        else:
            expected = F.cross_entropy(net(x_adv), y)
            assert len(model.inputs) == (1 if method == "fgsm_rs" else 3) + 1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fgsm_rs_takes_one_step_of_1_25_eps_from_a_random_start():
    eps = 0.2
    x = torch.full((16, 1, 28, 28), 0.5)  # far from 0 and 1: no range clipping
    y = torch.ones(16, dtype=torch.long)
    model = Recorder(ConstantGradient())
    loss_fn = _loss("fgsm_rs", eps=eps)
    loss_fn(model, x, y)
    start, trained_on = model.inputs[0], model.inputs[-1]
    u = start - x
    # uniform start in [-eps, eps]: spread over the whole ball, not a corner
    assert u.min() < -0.9 * eps and u.max() > 0.9 * eps and u.abs().mean() < 0.6 * eps
    delta = trained_on - x
    # step +1.25 eps from u, clipped to the ball: delta = min(u + 1.25 eps, eps) exactly
    assert torch.allclose(delta, torch.clamp(u + 1.25 * eps, max=eps), atol=1e-6)
    assert delta.min() >= 0.25 * eps - 1e-6 and delta.min() < 0.27 * eps
    interior = (delta < eps - 1e-6).float().mean().item()  # P(u < -0.25 eps) = 0.375
    assert 0.33 < interior < 0.42
    # a fresh random start on the next batch
    loss_fn(model, x, y)
    assert not torch.equal(model.inputs[-1], trained_on)


def test_pgd_and_trades_use_default_step_2_5_eps_over_steps():
    eps, steps = 0.2, 4
    x = torch.full((4, 1, 28, 28), 0.5)
    y = torch.ones(4, dtype=torch.long)
    model = Recorder(ConstantGradient())
    _loss("pgd", eps=eps, steps=steps)(model, x, y)
    walk = [seen - x for seen in model.inputs[:-1]]  # start, then after steps 1..3
    for before, after in zip(walk, walk[1:], strict=False):
        moved = after - before
        # each step adds alpha = 2.5 eps / steps = 0.125 wherever the ball allows it
        free = before < eps - 2.5 * eps / steps
        assert torch.allclose(moved[free], torch.full_like(moved[free], 2.5 * eps / steps),
                              atol=1e-6)
    assert AdversarialTrainingParams(method="trades", eps=0.3, steps=10).step_size(0.3) \
        == pytest.approx(0.075)
    assert AdversarialTrainingParams(method="fgsm_rs", eps=0.3).step_size(0.3) \
        == pytest.approx(0.375)


def test_eps_ramps_linearly_over_warmup_epochs():
    x, y = _batch(8)
    model = Recorder(_lenet())
    params = AdversarialTrainingParams(method="pgd", eps=0.3, warmup_epochs=1, steps=2)
    loss_fn = AdversarialLoss(params, steps_per_epoch=4, generator=torch.Generator())
    seen_eps = []
    for _ in range(6):
        model.inputs.clear()
        loss_fn(model, x, y)
        seen_eps.append(loss_fn.last_eps)
        assert (model.inputs[-1] - x).abs().max() <= loss_fn.last_eps + 1e-6
    assert seen_eps == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3, 0.3])


def _ctx(model, data, params, epochs=1, test=None):
    return DefenseContext(model=model, train=data, validation=test if test is not None else data,
                          params=params, seed=0, device=torch.device("cpu"),
                          train_config=TrainConfig(epochs=epochs, batch_size=64))


@pytest.mark.slow
def test_trades_with_beta_zero_is_plain_cross_entropy_training():
    x, y = _batch(256)
    data = Split(x, y)
    start = _lenet()
    plain = train(copy.deepcopy(start), data, TrainConfig(epochs=1, batch_size=64), seed=0)

    def trades(beta):
        params = AdversarialTrainingParams(method="trades", beta=beta, steps=2,
                                           from_scratch=False, monitor_limit=0)
        return AdversarialTraining(params).apply(_ctx(copy.deepcopy(start), data, params)).model

    zero, six = trades(0.0), trades(6.0)
    for (name, p_plain), p_zero in zip(plain.named_parameters(), zero.parameters(), strict=True):
        assert torch.equal(p_plain, p_zero), name
    # and the KL term does change training when beta > 0 (the comparison can fail)
    assert not all(torch.allclose(a, b, atol=1e-4)
                   for a, b in zip(plain.parameters(), six.parameters(), strict=True))


def test_from_scratch_reinitialises_like_seeded_construction():
    trained = train(_lenet(5), Split(*_batch(64)), TrainConfig(epochs=1), seed=0)
    state = torch.random.get_rng_state()
    fresh = fresh_init(trained, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    expected = _lenet(3)
    for a, b in zip(fresh.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(next(trained.parameters()), next(fresh.parameters()))


BASE = {
    "name": "t",
    "attacks": [{"name": "fgsm", "eps": [0.3]}],
    "defenses": [{"name": "none"}, {"name": "adversarial_training", "params": {}}],
}


@pytest.mark.parametrize("params,where,fragment", [
    ({"method": "pgdd"}, ".params.method", "'fgsm', 'fgsm_rs', 'pgd' or 'trades'"),
    ({"eps": 0.0}, ".params.eps", "greater than 0"),
    ({"eps": 1.5}, ".params.eps", "less than or equal to 1"),
    ({"eps": "0.3"}, ".params.eps", "valid number"),
    ({"epochs": 0}, ".params.epochs", "greater than or equal to 1"),
    ({"steps": 0}, ".params.steps", "greater than or equal to 1"),
    ({"alpha": 0}, ".params.alpha", "greater than 0"),
    ({"method": "trades", "beta": -1.0}, ".params.beta", "greater than or equal to 0"),
    ({"mix": 1.5, "method": "fgsm"}, ".params.mix", "less than or equal to 1"),
    ({"warmup_epochs": -1.0}, ".params.warmup_epochs", "greater than or equal to 0"),
    ({"optimizer": "rmsprop"}, ".params.optimizer", "'adam' or 'sgd'"),
    ({"from_scratch": "yes"}, ".params.from_scratch", "valid boolean"),
    ({"colour": 1}, ".params.colour", "unknown key"),
    ({"method": "fgsm", "steps": 3}, ".params", "steps is not used by method 'fgsm'"),
    ({"method": "fgsm", "alpha": 0.1}, ".params", "alpha is not used by method 'fgsm'"),
    ({"method": "pgd", "beta": 1.0}, ".params", "beta is not used by method 'pgd'"),
])
def test_bad_params_fail_at_suite_load_naming_the_key(params, where, fragment):
    raw = copy.deepcopy(BASE)
    raw["defenses"][1]["params"] = params
    with pytest.raises(UserError) as info:
        resolve_raw(raw, "s.yaml")
    assert info.value.where == f"s.yaml: defenses[1]{where}"
    assert fragment in info.value.message


def test_valid_params_load():
    raw = copy.deepcopy(BASE)
    raw["defenses"][1]["params"] = {"method": "trades", "eps": 0.3, "steps": 7, "beta": 1.0,
                                    "alpha": 0.05, "epochs": 2, "warmup_epochs": 0.5}
    params = resolve_raw(raw, "s.yaml").defenses[1].params
    assert params.step_size(0.15) == pytest.approx(0.025)  # alpha scales with the eps ramp


@pytest.mark.slow
def test_tiny_pgd_training_beats_the_undefended_model_of_the_same_budget(mnist):
    """2000 real MNIST images, 4 epochs each: PGD-AT (3 steps, eps 0.3, one-epoch ramp) vs
    plain training from the same initial weights, both attacked by PGD-20 at eps 0.3 on 400
    test images."""
    data, test = mnist.train.head(2000), mnist.test.head(400)
    epochs, eps = 4, 0.3
    plain = train(_lenet(0), data, TrainConfig(epochs=epochs), seed=0)
    params = AdversarialTrainingParams(method="pgd", eps=eps, steps=3, monitor_limit=100)
    ctx = _ctx(copy.deepcopy(plain), data, params, epochs=epochs, test=test)
    ctx.train_config = TrainConfig(epochs=epochs)
    result = AdversarialTraining(params).apply(ctx)
    robust = {}
    for name, model in (("plain", plain), ("at", result.model)):
        pgd = create_attack("pgd", model, {"steps": 20, "alpha": 2.5 * eps / 20}, seed=7)
        robust[name] = evaluate_attack(model, pgd, [eps], test)[0]
    assert robust["plain"].clean_acc > 0.75
    assert robust["at"].clean_acc > 0.45  # not a constant classifier (that scores ~0.1)
    assert robust["at"].robust_acc > robust["plain"].robust_acc + 0.10
    # the per-epoch monitor: steps 0..epochs of clean / FGSM / PGD-20 on 100 test images
    rows = {(m["step"], m["metric"]): m["value"] for m in result.metrics}
    for metric in ("clean_acc", "fgsm_acc", "pgd20_acc"):
        assert [s for s, m in rows if m == metric] == list(range(epochs + 1))
    assert rows[(epochs, "clean_acc")] == pytest.approx(accuracy(result.model, test.head(100)))
    assert rows[(epochs, "train_eps")] == eps
    assert all(m["method"] == "pgd" and m["monitor_n"] == 100 for m in result.metrics)
