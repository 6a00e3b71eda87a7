"""Unlearning methods: each test proves the mechanism a method claims, on a small real task.

The task: LeNet-5 trained for one epoch on 10 000 MNIST images (conftest ``trained_lenet``); the
forget set is FGSM (eps 0.2) examples of 300 other training images that the model misclassifies,
labelled with the model's wrong answers; the retain set is 512 clean training images drawn from
a 10 000-image "training split" (``train``, SSD's general data).
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
                          num_classes=10, train=mnist.train.subset(torch.arange(20_000, 30_000)))


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


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in ("scrub", "ssd") else name
    for name in METHODS])
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


@pytest.mark.slow
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


@pytest.mark.slow
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

@pytest.mark.slow
def test_scrub_moves_away_from_the_teacher_on_forget_and_stays_close_on_retain(trained_lenet,
                                                                              task):
    # pure distillation (gamma 0) isolates SCRUB's two KL terms; a constant lr, no weight
    # decay and large batches make the max-steps' effect easy to see in a short run. One seed's
    # ratio swings 3-14x with the torch thread count (last-bit arithmetic differences grow in
    # training), so the KLs are pooled over three seeds; pooled ratios measured 6-10x (forget vs
    # control) and 0.30-0.49 (retain vs forget) at 1-4 threads
    settings = dict(epochs=6, lr=1e-3, alpha=1.0, gamma=0.0, temperature=4.0, weight_decay=0.0,
                    lr_decay_epochs=[], batch_size=128, forget_batch_size=128)

    def kl(model, x):
        with torch.no_grad():
            return float(distill_kl(model(x), trained_lenet(x), 1.0))

    forget_kl = retain_kl = control_kl = 0.0
    for seed in range(3):
        student, method = run("scrub", trained_lenet, task, seed=seed, max_epochs=3, **settings)
        control, _ = run("scrub", trained_lenet, task, seed=seed, max_epochs=0, **settings)
        # the teacher is the model before the call, frozen
        assert same_weights(method.teacher, trained_lenet)
        assert not any(p.requires_grad for p in method.teacher.parameters())
        forget_kl += kl(student, task.forget.images)
        retain_kl += kl(student, task.retain.images)
        control_kl += kl(control, task.forget.images)
    assert forget_kl > 3 * control_kl    # the max-steps moved it away ...
    assert retain_kl < 0.75 * forget_kl  # ... more on the forget inputs than on the retain ones


SCRUB_SMALL_SCALE = {  # meghdadk/SCRUB small_scale_unlearning.ipynb, cells 26 and 30
    "optimizer": "adam", "lr": 5e-4, "weight_decay": 0.1, "epochs": 10, "max_epochs": 3,
    "temperature": 2.0, "gamma": 1.0, "alpha": 0.5, "lr_decay_epochs": [5, 8, 9],
    "lr_decay_rate": 0.1, "batch_size": 32, "forget_batch_size": 64,
}


def test_scrub_defaults_are_the_reference_small_scale_setting():
    assert UNLEARNING_METHODS.get("scrub").Params().model_dump() == SCRUB_SMALL_SCALE


@pytest.mark.slow
def test_scrub_runs_the_reference_schedule(trained_lenet, task, monkeypatch):
    cls = UNLEARNING_METHODS.get("scrub")
    seen: list[tuple[int, str, int, float]] = []
    original = cls.loss

    def recording_loss(self, model, batch, pass_name, epoch):
        x, _ = batch["forget" if pass_name == "max" else "retain"]
        seen.append((epoch, pass_name, x.shape[0], self.optimizer.param_groups[0]["lr"]))
        return original(self, model, batch, pass_name, epoch)

    monkeypatch.setattr(cls, "loss", recording_loss)
    run("scrub", trained_lenet, task)
    n_forget, n_retain = len(task.forget), len(task.retain)
    expected = []
    for epoch in range(10):
        # adjust_learning_rate: 1-based epoch e runs at lr · 0.1^#{d in [5, 8, 9] : e > d}
        lr = 5e-4 * 0.1 ** sum(epoch + 1 > d for d in (5, 8, 9))
        if epoch < 3:  # msteps: a full forget pass (batch 64) before the retain pass
            expected += [(epoch, "max", min(64, n_forget - s), lr) for s in range(0, n_forget, 64)]
        expected += [(epoch, "min", min(32, n_retain - s), lr) for s in range(0, n_retain, 32)]
    assert [row[:3] for row in seen] == [row[:3] for row in expected]
    assert [row[3] for row in seen] == pytest.approx([row[3] for row in expected], rel=1e-12)


def test_scrub_losses_and_weight_decay_are_the_references(trained_lenet, task):
    _, method = run("scrub", trained_lenet, task, epochs=0)  # teacher set up, nothing trained
    student = copy.deepcopy(trained_lenet)
    with torch.no_grad():  # a student that differs from the teacher
        for param in student.parameters():
            param.mul_(1.1)
    xf, xr, yr = task.forget.images[:64], task.retain.images[:32], task.retain.labels[:32]

    def kl_t2(x):  # DistillKL(kd_T = 2): sum-KL · T² / batch
        log_p_s = F.log_softmax(student(x) / 2, dim=1)
        p_t = F.softmax(trained_lenet(x) / 2, dim=1)
        return (p_t * (p_t.log() - log_p_s)).sum() * 4 / x.shape[0]

    with torch.no_grad():
        max_loss = method.loss(student, {"forget": (xf, task.forget.labels[:64])}, "max", 0)
        min_loss = method.loss(student, {"retain": (xr, yr)}, "min", 0)
        torch.testing.assert_close(max_loss, -kl_t2(xf))
        torch.testing.assert_close(min_loss, F.cross_entropy(student(xr), yr) + 0.5 * kl_t2(xr))
    # Adam's coupled weight decay: grad += 0.1·θ before every step
    for param in student.parameters():
        param.grad = torch.ones_like(param)
    method.before_step(student)
    for param in student.parameters():
        torch.testing.assert_close(param.grad, 1 + 0.1 * param.detach())


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


@pytest.mark.slow
def test_ssd_dampens_exactly_the_selected_parameters(trained_lenet, task):
    alpha, lam = 10.0, 1.0
    student, method = run("ssd", trained_lenet, task, alpha=alpha, lam=lam)
    reference = copy.deepcopy(trained_lenet)
    forget = _fisher(reference, task.forget.images, task.forget.labels, CFG.batch_size)
    # general importance on the full training data D, forget set included (the reference's
    # ConcatDataset((retain, forget)) loader: in order, batches across the seam)
    general = _fisher(reference, torch.cat([task.train.images, task.forget.images]),
                      torch.cat([task.train.labels, task.forget.labels]), CFG.batch_size)
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


def test_ssd_general_importance_includes_the_forget_set(trained_lenet, task):
    from robench.data import Split

    # D = train ∪ forget. With an empty training split D *is* the forget set, in the same
    # minibatches, so []_D = []_F exactly and nothing is ever selected (alpha ≥ 1) ...
    empty = Split(task.retain.images[:0], task.retain.labels[:0])
    only_forget = UnlearningData(retain=task.retain, forget=task.forget,
                                 forget_true_labels=task.forget_true_labels, train=empty)
    student, method = run("ssd", trained_lenet, only_forget)
    assert same_weights(student, trained_lenet)
    assert not any(bool(sel.any()) for sel in method.selected.values())
    # ... while a retain-only []_D (what the forget set is not part of) dampens weights
    reference = copy.deepcopy(trained_lenet)
    forget = _fisher(reference, task.forget.images, task.forget.labels, CFG.batch_size)
    retain_only = _fisher(reference, task.retain.images, task.retain.labels, CFG.batch_size)
    assert sum(int((f > 10 * g).sum()) for f, g in zip(forget, retain_only, strict=True)) > 0
    # without a training split, D is the reference's ConcatDataset((retain, forget)) itself
    no_train = UnlearningData(retain=task.retain, forget=task.forget,
                              forget_true_labels=task.forget_true_labels)
    _, method = run("ssd", trained_lenet, no_train)
    general = _fisher(reference, torch.cat([task.retain.images, task.forget.images]),
                      torch.cat([task.retain.labels, task.forget.labels]), CFG.batch_size)
    for (name, _), f, g in zip(trained_lenet.named_parameters(), forget, general, strict=True):
        assert torch.equal(method.selected[name], f > 10 * g), name


def test_chained_batches_run_across_the_seam_like_a_concatenated_loader():
    from robench.data import Split
    from robench.defenses.unlearning.ssd import chained_batches

    parts = [Split(torch.arange(n).float().view(n, 1, 1, 1) + base, torch.arange(n) + base)
             for n, base in ((5, 0), (0, 100), (6, 200))]
    got = [y.tolist() for _, y in chained_batches(parts, 4)]
    assert got == [[0, 1, 2, 3], [4, 200, 201, 202], [203, 204, 205]]


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

def test_l1_sparse_one_epoch_call_applies_the_full_penalty_at_every_step(trained_lenet, task,
                                                                         monkeypatch):
    from robench.defenses.unlearning.l1_sparse import l1_norm

    cls = UNLEARNING_METHODS.get("l1_sparse")
    effective: list[tuple[int, float]] = []
    original = cls.loss

    def measuring_loss(self, model, batch, pass_name, epoch):
        total = original(self, model, batch, pass_name, epoch)
        x, y = batch["retain"]
        with torch.no_grad():  # the alpha the loss really used: (loss − CE) / ‖θ‖₁
            effective.append((epoch, float((total - F.cross_entropy(model(x), y))
                                            / l1_norm(model))))
        return total

    monkeypatch.setattr(cls, "loss", measuring_loss)
    run("l1_sparse", trained_lenet, task, gamma=5e-3)  # the default: one epoch per call
    assert len(effective) == math.ceil(len(task.retain) / CFG.batch_size)
    assert [a for _, a in effective] == pytest.approx([5e-3] * len(effective), rel=1e-3)
    # several epochs: FT_iter's alpha · (1 − epoch / unlearn_epochs), constant within an epoch
    effective.clear()
    run("l1_sparse", trained_lenet, task, gamma=5e-3, epochs=4)
    for epoch, alpha in effective:
        assert alpha == pytest.approx(5e-3 * (1 - epoch / 4), rel=1e-3)
    assert {epoch for epoch, _ in effective} == {0, 1, 2, 3}


def test_l1_sparse_penalty_is_what_shrinks_the_weights(trained_lenet, task):
    from robench.defenses.unlearning.l1_sparse import l1_norm

    sparse, _ = run("l1_sparse", trained_lenet, task, epochs=2, gamma=5e-3)
    # same optimizer and shuffles without the penalty: gamma 0 is exactly plain fine-tuning ...
    plain, _ = run("l1_sparse", trained_lenet, task, epochs=2, gamma=0.0)
    finetuned, _ = run("finetune", trained_lenet, task, epochs=2, optimizer="sgd", lr=0.01)
    assert same_weights(plain, finetuned)
    # ... and the penalty is what shrinks the ℓ1 norm
    with torch.no_grad():
        assert float(l1_norm(sparse)) < float(l1_norm(plain)) - 1.0
