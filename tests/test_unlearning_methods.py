"""Unlearning methods: each test proves the mechanism a method claims, on a small real task.

The task: LeNet-5 trained for one epoch on 10 000 MNIST images (conftest ``trained_lenet``); the
forget set is FGSM (eps 0.2) examples of 300 other training images that the model misclassifies,
labelled with the model's wrong answers; the retain set is 512 clean training images.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from robench.attacks import create_attack
from robench.defenses.unlearning import UNLEARNING_METHODS, UnlearningData
from robench.defenses.unlearning.defense import build_forget_set
from robench.defenses.unlearning.method import distill_kl, random_other_labels
from robench.training import TrainConfig

CFG = TrainConfig(epochs=1, batch_size=128, lr=1e-3, optimizer="adam")
METHODS = ["finetune", "l1_sparse", "neggrad", "neggrad_plus", "random_label", "salun", "scrub",
           "ssd"]


@pytest.fixture(scope="module")
def task(mnist, trained_lenet) -> UnlearningData:
    clean = mnist.train.subset(torch.arange(10_000, 10_300))
    attack = create_attack("fgsm", trained_lenet)
    forget, true_labels = build_forget_set(trained_lenet, attack, clean, [0.2],
                                              torch.zeros(300, dtype=torch.long))
    assert len(forget) > 50  # enough misclassified examples for the mechanisms to show
    retain = mnist.train.subset(torch.arange(20_000, 20_512))
    return UnlearningData(retain=retain, forget=forget, forget_true_labels=true_labels,
                          num_classes=10)


def run(name: str, model, task: UnlearningData, seed: int = 0, **params):
    cls = UNLEARNING_METHODS.get(name)
    method = cls(cls.Params(**params))
    student = copy.deepcopy(model)
    method.unlearn(student, task, seed=seed, train_config=CFG)
    return student, method


def forget_ce(model, task: UnlearningData) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(task.forget.images), task.forget.labels))


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


# -- the registry and the shared contract ---------------------------------------------------------

def test_registry_lists_every_method_with_a_description():
    from robench.plugins import all_registries
    from robench.registry import describe

    registries = dict(all_registries())
    assert registries["unlearning methods"] is UNLEARNING_METHODS
    assert set(METHODS) <= set(UNLEARNING_METHODS.names())
    for name in METHODS:
        line = describe(UNLEARNING_METHODS.get(name))
        assert line and "et al" in line, name  # robench list shows a one-liner citing the paper


@pytest.mark.parametrize("name", METHODS)
def test_every_method_changes_the_model_and_returns_it_clean(name, trained_lenet, task):
    student, _ = run(name, trained_lenet, task)
    assert not student.training
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert not same_weights(student, trained_lenet)
    # the shared fixture model is never touched
    assert all(p.grad is None for p in trained_lenet.parameters())


@pytest.mark.parametrize("name, params, where", [
    ("finetune", {"epoch": 1}, "epoch"),
    ("finetune", {"epochs": -1}, "epochs"),
    ("finetune", {"lr": 0.0}, "lr"),
    ("finetune", {"optimizer": "rmsprop"}, "optimizer"),
    ("neggrad", {"loss_bound": -1.0}, "loss_bound"),
    ("neggrad_plus", {"beta": 1.5}, "beta"),
    ("neggrad_plus", {"beta": "0.5"}, "beta"),  # strict: no string-to-number coercion
    ("scrub", {"temperature": 0.0}, "temperature"),
    ("scrub", {"max_epochs": -1}, "max_epochs"),
    ("ssd", {"alpha": 0}, "alpha"),
    ("ssd", {"epochs": 3}, "epochs"),             # SSD does not train: no epochs key at all
    ("salun", {"mask_ratio": 0.0}, "mask_ratio"),
    ("salun", {"mask_ratio": 1.5}, "mask_ratio"),
    ("l1_sparse", {"gamma": -0.1}, "gamma"),
    ("random_label", {"exclude_true_label": "yes"}, "exclude_true_label"),
])
def test_bad_method_params_are_rejected(name, params, where):
    with pytest.raises(ValidationError) as info:
        UNLEARNING_METHODS.get(name).Params.model_validate(params)
    assert info.value.errors()[0]["loc"][0] == where


# -- finetune / NegGrad / NegGrad+ ----------------------------------------------------------------

def test_finetune_never_looks_at_the_forget_set(trained_lenet, task):
    a, _ = run("finetune", trained_lenet, task)
    scrambled = UnlearningData(retain=task.retain, forget=type(task.forget)(
        torch.rand_like(task.forget.images), (task.forget.labels + 1) % 10),
        forget_true_labels=task.forget_true_labels)
    b, _ = run("finetune", trained_lenet, scrambled)
    assert same_weights(a, b)


def test_neggrad_raises_the_forget_loss(trained_lenet, task):
    student, method = run("neggrad", trained_lenet, task, epochs=2, lr=1e-3)
    assert method.steps > 0
    assert forget_ce(student, task) > forget_ce(trained_lenet, task) + 0.5


def test_neggrad_clips_each_example_at_the_bound():
    from robench.defenses.unlearning.neggrad import clipped_ce

    bound = math.log(10)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-6.0, 3.0, 3.0]],
                          requires_grad=True)
    labels = torch.zeros(3, dtype=torch.long)  # CE: ~0.04, ~1.10, ~9.7 (past the bound)
    clipped_ce(logits, labels, bound).backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1].abs().sum() > 0
    assert torch.equal(logits.grad[2], torch.zeros(3))  # past the bound: no push at all


def test_neggrad_stops_once_every_forget_example_is_past_the_bound(trained_lenet, task):
    # label every forget input with the class the model finds least likely: p < 1/K, so every
    # CE is already above ln(K) and there is nothing left to unlearn
    with torch.no_grad():
        least = trained_lenet(task.forget.images).argmin(1)
    done = UnlearningData(retain=task.retain, forget=type(task.forget)(task.forget.images, least),
                          forget_true_labels=task.forget_true_labels)
    student, method = run("neggrad", trained_lenet, done, epochs=50, lr=1e-3)
    assert method.steps == 0
    assert same_weights(student, trained_lenet)
    # the same inputs with the model's own labels do get unlearned
    _, busy = run("neggrad", trained_lenet, task, epochs=1, lr=1e-3)
    assert busy.steps == math.ceil(len(task.forget) / CFG.batch_size)


def test_neggrad_plus_with_beta_one_is_exactly_finetune(trained_lenet, task):
    finetuned, _ = run("finetune", trained_lenet, task, epochs=2)
    plus, _ = run("neggrad_plus", trained_lenet, task, epochs=2, beta=1.0)
    assert same_weights(finetuned, plus)
    # and the forget term is real: any β < 1 gives other weights and a higher forget loss
    ascent, _ = run("neggrad_plus", trained_lenet, task, epochs=2, beta=0.9)
    assert not same_weights(finetuned, ascent)
    assert forget_ce(ascent, task) > forget_ce(finetuned, task)


# -- random labels --------------------------------------------------------------------------------

def test_random_other_labels_never_draw_an_excluded_class():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (5000,), generator=generator)
    true = torch.randint(10, (5000,), generator=generator)
    drawn = random_other_labels(labels, 10, generator, also_exclude=true)
    assert not (drawn == labels).any() and not (drawn == true).any()
    # uniform over what is left: every allowed class turns up
    two_excluded = labels != true
    assert set(drawn[two_excluded].tolist()) == set(range(10))
    row = torch.tensor([3])
    seen = {int(random_other_labels(row, 10, generator, also_exclude=torch.tensor([7])))
            for _ in range(300)}
    assert seen == set(range(10)) - {3, 7}


@pytest.mark.parametrize("name", ["random_label", "salun"])
def test_random_label_training_never_uses_the_true_or_forget_label(name, trained_lenet, task,
                                                                    monkeypatch):
    cls = UNLEARNING_METHODS.get(name)
    seen: list[torch.Tensor] = []
    original = cls.loss

    def recording_loss(self, model, batch, pass_name, epoch):
        if pass_name == "forget":
            x, y = batch["forget"]
            rows = [int((task.forget.images == xi).flatten(1).all(1).nonzero()[0]) for xi in x]
            seen.append(torch.stack([y, task.forget.labels[rows],
                                     task.forget_true_labels[rows]], 1))
        return original(self, model, batch, pass_name, epoch)

    monkeypatch.setattr(cls, "loss", recording_loss)
    run(name, trained_lenet, task, epochs=3)
    used = torch.cat(seen)
    assert used.shape[0] == 3 * len(task.forget)  # every forget example, every epoch
    assert not (used[:, 0] == used[:, 1]).any()   # never the (adversarial) forget label
    assert not (used[:, 0] == used[:, 2]).any()   # never the true label


# -- SCRUB ----------------------------------------------------------------------------------------

def test_scrub_moves_away_from_the_teacher_on_forget_and_stays_close_on_retain(trained_lenet,
                                                                              task):
    # pure distillation (gamma 0) isolates SCRUB's two KL terms
    settings = dict(epochs=6, lr=1e-3, alpha=1.0, gamma=0.0)
    student, method = run("scrub", trained_lenet, task, max_epochs=3, **settings)
    control, _ = run("scrub", trained_lenet, task, max_epochs=0, **settings)

    def kl(model, x):
        with torch.no_grad():
            return float(distill_kl(model(x), trained_lenet(x), 1.0))

    # the teacher is the model before the call, frozen
    assert same_weights(method.teacher, trained_lenet)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    forget_kl, retain_kl = kl(student, task.forget.images), kl(student, task.retain.images)
    assert forget_kl > 3 * kl(control, task.forget.images)  # the max-steps moved it away ...
    assert retain_kl < 0.6 * forget_kl                      # ... mostly on the forget inputs


# -- SSD ------------------------------------------------------------------------------------------

def _fisher(model, images, labels, batch_size):
    total = [torch.zeros_like(p) for p in model.parameters()]
    count = 0
    for start in range(0, len(labels), batch_size):
        model.zero_grad()
        F.cross_entropy(model(images[start:start + batch_size]),
                        labels[start:start + batch_size]).backward()
        for acc, p in zip(total, model.parameters(), strict=True):
            acc += p.grad ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return [t / count for t in total]


def test_ssd_dampens_exactly_the_selected_parameters(trained_lenet, task):
    alpha, lam = 10.0, 1.0
    student, method = run("ssd", trained_lenet, task, alpha=alpha, lam=lam)
    reference = copy.deepcopy(trained_lenet)
    forget = _fisher(reference, task.forget.images, task.forget.labels, CFG.batch_size)
    general = _fisher(reference, task.retain.images, task.retain.labels, CFG.batch_size)
    n_selected = n_other = 0
    for (name, before), after, f, g in zip(trained_lenet.named_parameters(),
                                           student.parameters(), forget, general, strict=True):
        selected = f > alpha * g
        assert torch.equal(selected, method.selected[name]), name
        # everything not selected is bit-identical
        assert torch.equal(after[~selected], before[~selected]), name
        # selected weights are scaled by min(λ·g/f, 1) and never grow
        factor = (lam * g[selected] / f[selected]).clamp(max=1.0)
        torch.testing.assert_close(after[selected], before[selected] * factor)
        assert bool((after[selected].abs() <= before[selected].abs()).all())
        n_selected += int(selected.sum())
        n_other += int((~selected).sum())
    assert n_selected > 0 and n_other > n_selected


# -- SalUn ----------------------------------------------------------------------------------------

def test_salun_updates_only_the_masked_weights(trained_lenet, task):
    student, method = run("salun", trained_lenet, task, epochs=2, mask_ratio=0.5)
    # the mask is the top half of |∇ forget CE|, recomputed here independently
    reference = copy.deepcopy(trained_lenet)
    reference.zero_grad()
    for start in range(0, len(task.forget), CFG.batch_size):
        F.cross_entropy(reference(task.forget.images[start:start + CFG.batch_size]),
                        task.forget.labels[start:start + CFG.batch_size]).backward()
    saliency = torch.cat([p.grad.abs().flatten() for p in reference.parameters()])
    mask = torch.cat([m.flatten() for m in method.mask.values()])
    assert int(mask.sum()) == round(0.5 * mask.numel())
    assert saliency[mask].min() >= saliency[~mask].max() * (1 - 1e-5)

    changed_masked = 0
    for (name, before), after in zip(trained_lenet.named_parameters(), student.parameters(),
                                     strict=True):
        keep = ~method.mask[name]
        assert torch.equal(after[keep], before[keep]), name  # unmasked: bit-identical
        changed_masked += int((after[~keep] != before[~keep]).sum())
    assert changed_masked > 0.5 * int(mask.sum())  # most masked weights did move


# -- l1-sparse ------------------------------------------------------------------------------------

def test_l1_sparse_penalty_decays_to_zero_and_shrinks_the_weights(trained_lenet, task):
    from robench.defenses.unlearning.l1_sparse import l1_norm

    sparse, method = run("l1_sparse", trained_lenet, task, epochs=2, gamma=5e-3)
    weights = [method.penalty_weight(t) for t in range(method.steps + 1)]
    assert weights[0] == pytest.approx(5e-3) and weights[-1] == 0.0
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))  # strictly decaying
    # same optimizer and shuffles without the penalty: gamma 0 is exactly plain fine-tuning ...
    plain, _ = run("l1_sparse", trained_lenet, task, epochs=2, gamma=0.0)
    finetuned, _ = run("finetune", trained_lenet, task, epochs=2, optimizer="sgd", lr=0.01)
    assert same_weights(plain, finetuned)
    # ... and the penalty is what shrinks the ℓ1 norm
    with torch.no_grad():
        assert float(l1_norm(sparse)) < float(l1_norm(plain)) - 1.0
