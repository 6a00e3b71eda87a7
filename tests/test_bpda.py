"""BPDA (``robench.attacks.bpda``): PGD through a defense's differentiable surrogate; ``pgd``
itself where there is none; it breaks a 1-bit quantiser that plain PGD cannot touch."""

import pytest
import torch
from torch import nn

from robench.attacks import create_attack
from robench.attacks.bpda import surrogate_of
from robench.defenses.bit_depth import Quantize
from robench.evaluation import evaluate_attack
from robench.plan import resolve_raw


def attack_pair(model, x, y, eps, **params):
    """PGD and BPDA examples with the same seed and named images."""
    out = []
    for name in ("pgd", "bpda"):
        attack = create_attack(name, model, params, seed=7)
        attack.set_images(list(range(len(y))))
        out.append(attack(x, y, eps))
    return out


@pytest.mark.parametrize("params", [{"steps": 10, "restarts": 2},
                                    {"steps": 10, "early_stop": False},
                                    {"steps": 10, "norm": "l2", "alpha": 0.2}])
def test_bpda_is_pgd_without_a_surrogate(trained_lenet, batch, params):
    x, y = batch[0][:200], batch[1][:200]
    eps = 1.5 if params.get("norm") == "l2" else 0.1
    pgd, bpda = attack_pair(trained_lenet, x, y, eps, **params)
    assert surrogate_of(trained_lenet) is None
    assert torch.equal(pgd, bpda)
    with torch.no_grad():
        fooled = trained_lenet(pgd).argmax(1) != y
    assert 0 < fooled.sum() < len(y)  # a real attack, not a trivial one


class RecordingSurrogate(nn.Module):
    """The model itself, recording whether each call computes a gradient."""

    def __init__(self, model, calls):
        super().__init__()
        self.model, self.calls = model, calls

    def forward(self, x):
        self.calls.append(torch.is_grad_enabled())
        return self.model(x)


class WithSurrogate(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x):
        return self.model(x)

    def surrogate(self):
        return RecordingSurrogate(self.model, self.calls)


def test_predictions_are_the_real_models(trained_lenet, batch):
    """The surrogate is only ever differentiated, never asked for a prediction (the stop test,
    the restarts' test and the final check are the real model's, under no_grad); with a
    surrogate equal to the model, BPDA is PGD exactly."""
    x, y = batch[0][:200], batch[1][:200]
    wrapped = WithSurrogate(trained_lenet).eval()
    for params in ({"steps": 10, "restarts": 2}, {"steps": 10, "early_stop": False}):
        pgd = create_attack("pgd", wrapped, params, seed=3)
        bpda = create_attack("bpda", wrapped, params, seed=3)
        assert torch.equal(pgd(x, y, 0.1), bpda(x, y, 0.1))
    assert wrapped.calls and all(wrapped.calls)


def test_straight_through_surrogate(trained_lenet, batch):
    """Quantize's surrogate: the same logits, the identity backward through the rounding."""
    x = batch[0][:50]
    quantized = Quantize(trained_lenet, bits=1).eval()
    surrogate = surrogate_of(quantized)
    with torch.no_grad():
        assert torch.equal(surrogate(x), quantized(x))
    # input gradients only: the shared fixture's parameters must keep no .grad
    x1 = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(surrogate(x1).sum(), x1)
    x2 = (torch.round(x) / 1).requires_grad_(True)
    (g2,) = torch.autograd.grad(trained_lenet(x2).sum(), x2)
    assert torch.equal(g1, g2)
    assert all(p.grad is None for p in trained_lenet.parameters())
    assert surrogate.training is False


def test_seed_is_pgds():
    """In a suite BPDA starts where PGD with the same params starts."""
    suite = {"name": "s", "data": {"dataset": "mnist"}, "train": {"epochs": 0},
             "defenses": [{"name": "none"}],
             "attacks": [{"name": "pgd", "eps": [0.3], "params": {"steps": 5}},
                         {"name": "bpda", "eps": [0.3], "params": {"steps": 5}},
                         {"name": "pgd", "eps": [0.3], "params": {"steps": 6}}]}
    pgd, bpda, other = resolve_raw(suite, "s.yaml").attacks
    assert bpda.label == "bpda"
    assert bpda.seed == pgd.seed != other.seed
    assert bpda.params_json == pgd.params_json


@pytest.mark.slow
def test_bpda_breaks_a_one_bit_quantiser(trained_lenet, mnist):
    """Bound stated before running: on 200 real test images, plain PGD leaves >= 80 % at eps
    0.5 (the rounding's gradient is zero), BPDA <= 5 %; at eps 0.3 BPDA is strictly lower."""
    test = mnist.test.head(200)
    quantized = Quantize(trained_lenet, bits=1).eval()
    acc = {}
    for name in ("pgd", "bpda"):
        for eps, alpha in ((0.5, 0.05), (0.3, 0.03)):
            attack = create_attack(name, quantized, {"steps": 40, "alpha": alpha}, seed=0)
            (outcome,) = evaluate_attack(quantized, attack, [eps], test)
            acc[name, eps] = outcome.adv_ok.float().mean().item()
    assert acc["pgd", 0.5] >= 0.80
    assert acc["bpda", 0.5] <= 0.05
    assert acc["bpda", 0.3] < acc["pgd", 0.3]


def test_a_declared_surrogate_the_model_does_not_offer_is_an_error_not_plain_pgd(synthetic):
    """bit_depth_reduction declares a surrogate (has_surrogate); a model that hides it (here
    behind a wrapper) must stop bpda's first cell with one line naming the defense, whether
    bpda is a suite entry or an adaptive variant. Where the defense declares none, bpda is pgd
    (no error); pgd itself never needs one."""
    from robench.errors import UserError
    from robench.models import LeNet5
    from robench.progress import Reporter
    from robench.tasks import check_surrogate, run_attack_cells

    raw = {"name": "s", "data": {"dataset": "mnist"}, "train": {"epochs": 0},
           "defenses": [{"name": "none"}, {"name": "bit_depth_reduction"}],
           "attacks": [{"name": "pgd", "eps": [0.3], "params": {"steps": 2}},
                       {"name": "bpda", "label": "my_bpda", "eps": [0.3],
                        "params": {"steps": 3}}]}
    plan = resolve_raw(raw, "s.yaml")
    none, bdr = plan.defenses
    pgd, mine, variant = plan.attacks
    assert variant.label == "bpda[of=pgd]"
    quantized = Quantize(LeNet5(), bits=1).eval()
    hidden = nn.Sequential(quantized)  # a wrapper without surrogate()
    for bpda in (mine, variant):
        with pytest.raises(UserError) as err:
            run_attack_cells(bpda, hidden, None, bpda.eps, synthetic.test.head(4),
                             Reporter(quiet=True), "d", defense=bdr)
        line = str(err.value)
        assert len(line.splitlines()) == 1
        assert "'bit_depth_reduction' declares a differentiable surrogate" in line
        assert "no surrogate()" in line and bpda.label in line
        check_surrogate(bpda, bdr, quantized)   # offered: fine
        check_surrogate(bpda, none, hidden)     # not declared: bpda is pgd (documented)
        check_surrogate(bpda, None, hidden)     # no defense given (a library caller)
    check_surrogate(pgd, bdr, hidden)           # pgd follows no surrogate
