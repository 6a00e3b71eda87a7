"""The unlearning defense's ``attack: fgsm | pgd``: FGSM (the default) makes exactly the forget
set the documented algorithm gives, PGD a forget set that fools the model more often."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from robench.defenses import DEFENSES, DefenseContext
from robench.defenses.unlearning import UNLEARNING_METHODS
from robench.defenses.unlearning.defense import PGD_STEP_FACTOR, PGD_STEPS, pgd_examples
from robench.errors import UserError
from robench.plan import resolve_raw
from robench.seeds import generator
from robench.training import TrainConfig, predict

EPS = [0.05, 0.15, 0.3]


def _context(mnist, model, params: dict) -> DefenseContext:
    p = DEFENSES.get("unlearning").Params.model_validate(params)
    # the monitoring split is being renamed (test -> validation); either works here
    fields = {f.name for f in dataclasses.fields(DefenseContext)}
    monitor = {"validation" if "validation" in fields else "test": mnist.test.head(100)}
    return DefenseContext(model=copy.deepcopy(model), train=mnist.train.head(3000), params=p,
                          seed=0, device=torch.device("cpu"), train_config=TrainConfig(epochs=1),
                          **monitor)


def _first_round(mnist, model, monkeypatch, **params) -> tuple:
    """The data the method receives in round 1 (one round, finetune, no monitor)."""
    seen = []
    cls = UNLEARNING_METHODS.get("finetune")
    monkeypatch.setattr(cls, "unlearn", lambda self, m, data, seed, train_config:
                        seen.append(data) or m)
    ctx = _context(mnist, model, {"rounds": 1, "forget_size": 400, "retain_size": 100,
                                  "eps": EPS, "method": "finetune", "monitor_limit": 0,
                                  **params})
    DEFENSES.get("unlearning")(ctx.params).apply(ctx)
    return seen[0], ctx


def test_default_fgsm_forget_set_is_the_documented_one(mnist, trained_lenet, monkeypatch):
    """Round 1 samples images and per-image eps from derive_seed(seed, "round", 1); each image
    gets x + eps_i * sign(grad) clipped to [0, 1]; the ones the model misclassifies form the
    forget set with the model's labels. Computed here independently of the defense's code."""
    data, ctx = _first_round(mnist, trained_lenet, monkeypatch)
    assert ctx.params.attack == "fgsm"
    draw = generator(0, "round", 1)
    sample = torch.randperm(len(ctx.train), generator=draw)[:400]
    eps_index = torch.randint(len(EPS), (400,), generator=draw)
    x, y = ctx.train.images[sample], ctx.train.labels[sample]
    x_req = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(trained_lenet(x_req), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_req)
    eps = torch.tensor(EPS)[eps_index].view(-1, 1, 1, 1)
    x_adv = (x + eps * grad.sign()).clamp(0, 1)
    predicted = predict(trained_lenet, x_adv)
    wrong = predicted != y
    assert torch.equal(data.forget.images, x_adv[wrong])
    assert torch.equal(data.forget.labels, predicted[wrong])
    assert torch.equal(data.forget_true_labels, y[wrong])


@pytest.mark.slow
def test_pgd_forget_set_fools_the_model_more_often(mnist, trained_lenet, monkeypatch):
    fgsm, _ = _first_round(mnist, trained_lenet, monkeypatch)
    pgd, _ = _first_round(mnist, trained_lenet, monkeypatch, attack="pgd")
    # the same 400 sampled images: PGD fools the model on more of them
    assert len(pgd.forget) > len(fgsm.forget) + 20, (len(pgd.forget), len(fgsm.forget))
    assert torch.equal(predict(trained_lenet, pgd.forget.images), pgd.forget.labels)
    assert not (pgd.forget.labels == pgd.forget_true_labels).any()


@pytest.mark.slow
def test_pgd_examples_are_pgd_at_each_images_own_eps(mnist, trained_lenet):
    """Per image: the documented PGD (10 steps of 2.5 * eps / 10, random start from the seed and
    the image's id, the final iterate) at that image's eps only, whatever the other images'
    eps."""
    from robench.attacks import create_attack

    x, y = mnist.train.images[:60], mnist.train.labels[:60]
    ids = torch.arange(1000, 1060)
    eps_index = torch.arange(60) % 2
    mixed = pgd_examples(trained_lenet, x, y, [0.1, 0.3], eps_index, ids, seed=9)
    for k, eps in enumerate([0.1, 0.3]):
        rows = eps_index == k
        attack = create_attack("pgd", trained_lenet, {  # the final iterate (no active set)
            "steps": PGD_STEPS, "alpha": PGD_STEP_FACTOR * eps / PGD_STEPS,
            "early_stop": False}, seed=9)
        attack.set_images(ids[rows].tolist())
        assert torch.equal(mixed[rows], attack(x[rows], y[rows], eps))
        linf = (mixed[rows] - x[rows]).abs().flatten(1).amax(1)
        assert (linf <= eps + 1e-6).all() and (linf > eps / 2).all()


def test_attack_option_is_validated_and_joins_the_cache_key():
    base = {"name": "t", "data": {"dataset": "mnist"}, "train": {"epochs": 1},
            "attacks": [{"name": "fgsm", "eps": [0.1]}]}

    def defenses(**params):
        return dict(base, defenses=[{"name": "unlearning", "params": params}])

    with pytest.raises(UserError) as info:
        resolve_raw(defenses(attack="cw"), "s.yaml")
    assert info.value.where == "s.yaml: defenses[0].params.attack"
    default = resolve_raw(defenses(), "s.yaml").defenses[0]
    fgsm = resolve_raw(defenses(attack="fgsm"), "s.yaml").defenses[0]
    pgd = resolve_raw(defenses(attack="pgd"), "s.yaml").defenses[0]
    assert default.cache_key == fgsm.cache_key != pgd.cache_key
    names = {c.__name__ for c in pgd.plugin.code_dependencies(pgd.params)}
    assert {"PGD", "FGSM"} <= names
    assert "PGD" not in {c.__name__ for c in fgsm.plugin.code_dependencies(fgsm.params)}
