"""The ``unlearning`` defense: forget-set construction, suite-load validation, the round loop and
its metrics, and the real CLI end to end on ``suites/unlearning_small.yaml``."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from robench.attacks import create_attack
from robench.defenses import DEFENSES, DefenseContext
from robench.defenses.unlearning import UNLEARNING_METHODS
from robench.defenses.unlearning.defense import (
    UnlearningDefenseParams,
    adversarial_examples,
    build_forget_set,
)
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.plan import resolve_raw
from robench.training import TrainConfig, accuracy, predict

REPO = Path(__file__).resolve().parents[1]
METRICS = {"forget_size", "forget_attack_success", "forget_true_acc", "clean_acc", "fgsm_acc",
           "seconds"}


# -- the forget set -------------------------------------------------------------------------------

def test_forget_set_holds_only_misclassified_adversarial_examples_with_the_models_labels(
        mnist, trained_lenet):
    clean = mnist.train.subset(torch.arange(30_000, 30_400))
    eps_values = [0.05, 0.15, 0.3]
    eps_index = torch.randint(3, (400,), generator=torch.Generator().manual_seed(1))
    attack = create_attack("fgsm", trained_lenet)
    forget, true_labels = build_forget_set(trained_lenet, attack, clean, eps_values, eps_index)

    # independently: attack each eps group with a scalar-eps FGSM call, count the fooled ones
    expected = torch.zeros(400, dtype=torch.bool)
    for k, eps in enumerate(eps_values):
        group = (eps_index == k).nonzero().squeeze(1)
        x_adv = attack(clean.images[group], clean.labels[group], eps)
        expected[group] = predict(trained_lenet, x_adv) != clean.labels[group]
    rows = expected.nonzero().squeeze(1)
    assert len(forget) == len(rows) and 0 < len(forget) < 400

    assert torch.equal(predict(trained_lenet, forget.images), forget.labels)  # model's answers
    assert not (forget.labels == true_labels).any()                          # all wrong
    assert torch.equal(true_labels, clean.labels[rows])
    # each example sits at its own eps: FGSM moves some pixel by exactly eps, none further
    linf = (forget.images - clean.images[rows]).abs().flatten(1).amax(1)
    wanted = torch.tensor(eps_values)[eps_index[rows]]
    torch.testing.assert_close(linf, wanted)
    assert forget.images.min() >= 0 and forget.images.max() <= 1


def test_per_image_eps_sampling_matches_one_fgsm_call_per_eps(mnist, trained_lenet):
    x, y = mnist.test.images[:64], mnist.test.labels[:64]
    eps_index = torch.arange(64) % 2
    attack = create_attack("fgsm", trained_lenet)
    mixed = adversarial_examples(attack, x, y, [0.1, 0.2], eps_index, batch_size=20)
    assert torch.equal(mixed[eps_index == 0], attack(x, y, 0.1)[eps_index == 0])
    assert torch.equal(mixed[eps_index == 1], attack(x, y, 0.2)[eps_index == 1])


# -- validation at suite load ---------------------------------------------------------------------

BASE = {"name": "t", "data": {"dataset": "mnist"}, "train": {"epochs": 1},
        "attacks": [{"name": "fgsm", "eps": [0.1]}]}


def _suite(params: dict) -> dict:
    suite = copy.deepcopy(BASE)
    suite["defenses"] = [{"name": "none"}, {"name": "unlearning", "params": params}]
    return suite


@pytest.mark.parametrize("params, where, fragment", [
    ({"rounds": 0}, "defenses[1].params.rounds", "greater than or equal to 1"),
    ({"round": 2}, "defenses[1].params.round", "unknown key"),
    ({"forget_size": "100"}, "defenses[1].params.forget_size", "integer"),
    ({"eps": 1.5}, "defenses[1].params.eps", "(0, 1]"),
    ({"eps": [0.1, 0.0]}, "defenses[1].params.eps", "(0, 1]"),
    ({"eps": []}, "defenses[1].params.eps", "must not be empty"),
    ({"eps": "0.3"}, "defenses[1].params.eps", "number"),
    ({"method": "scrubb"}, "defenses[1].params.method", "did you mean 'scrub'"),
    ({"method": "scrub", "method_params": {"temperature": -1.0}},
     "defenses[1].params.method_params", "temperature: Input should be greater than 0"),
    ({"method": "ssd", "method_params": {"epochs": 2}}, "defenses[1].params.method_params",
     "epochs: unknown key"),
    ({"method_params": {"beta": 2.0}}, "defenses[1].params.method_params", "beta"),  # default
    ({"method": "salun", "method_params": {"mask_ratio": "half"}},
     "defenses[1].params.method_params", "'salun'"),
])
def test_bad_params_are_rejected_at_suite_load_with_the_key_path(params, where, fragment):
    with pytest.raises(UserError) as info:
        resolve_raw(_suite(params), "s.yaml")
    assert info.value.where == f"s.yaml: {where}"
    assert fragment in info.value.message


def test_good_params_load_and_every_method_is_accepted():
    for name in UNLEARNING_METHODS.names():
        resolve_raw(_suite({"method": name, "eps": 0.2, "rounds": 2}), "s.yaml")
    params = UnlearningDefenseParams(eps=0.25)
    assert params.eps_values == [0.25] and params.method == "neggrad_plus"
    assert UnlearningDefenseParams().eps_values == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


# -- the round loop -------------------------------------------------------------------------------

def _context(mnist, model, params: dict, seed: int = 0) -> DefenseContext:
    p = DEFENSES.get("unlearning").Params.model_validate(params)
    return DefenseContext(model=copy.deepcopy(model), train=mnist.train.head(3000),
                          validation=mnist.test.head(300), params=p, seed=seed,
                          device=torch.device("cpu"), train_config=TrainConfig(epochs=1))


@pytest.mark.slow
def test_rounds_log_every_metric_computed_on_the_current_model(mnist, trained_lenet):
    params = {"rounds": 2, "forget_size": 200, "retain_size": 500, "eps": [0.1, 0.3],
              "method": "neggrad_plus"}
    ctx = _context(mnist, trained_lenet, params)
    result = DEFENSES.get("unlearning")(ctx.params).apply(ctx)
    rows = pd.DataFrame(result.metrics)

    assert set(rows["method"]) == {"neggrad_plus"}
    assert set(rows[rows["step"] == 0]["metric"]) == {"clean_acc", "fgsm_acc"}  # the baseline
    for step in (1, 2):
        assert set(rows[rows["step"] == step]["metric"]) == METRICS
    value = rows.set_index(["step", "metric"])["value"]
    assert value[(0, "clean_acc")] == pytest.approx(accuracy(trained_lenet, ctx.validation))
    # the last round's numbers are those of the returned model, at the largest eps
    model = result.model
    assert value[(2, "clean_acc")] == pytest.approx(accuracy(model, ctx.validation))
    fgsm = evaluate_attack(model, create_attack("fgsm", model), [0.3], ctx.validation)[0]
    assert value[(2, "fgsm_acc")] == pytest.approx(fgsm.robust_acc)
    for step in (1, 2):
        assert 0 < value[(step, "forget_size")] <= 200
        assert 0 <= value[(step, "forget_attack_success")] <= 1
        assert value[(step, "forget_attack_success")] + value[(step, "forget_true_acc")] <= 1
        assert value[(step, "seconds")] > 0
    assert not model.training and not same(model, trained_lenet)


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("retain_adversarial", [False, True])
def test_the_method_receives_the_documented_forget_and_retain_sets(mnist, trained_lenet,
                                                                   monkeypatch,
                                                                   retain_adversarial):
    cls = UNLEARNING_METHODS.get("finetune")
    seen = []
    original = cls.unlearn

    def recording(self, model, data, seed, train_config):
        before = copy.deepcopy(model)
        seen.append((data, before))
        return original(self, model, data, seed, train_config)

    monkeypatch.setattr(cls, "unlearn", recording)
    ctx = _context(mnist, trained_lenet, {"rounds": 2, "forget_size": 150, "retain_size": 400,
                                          "eps": 0.3, "method": "finetune",
                                          "retain_adversarial": retain_adversarial})
    DEFENSES.get("unlearning")(ctx.params).apply(ctx)
    assert len(seen) == 2
    train_images = {img.numpy().tobytes() for img in ctx.train.images}
    previous_retain = None
    for data, model_then in seen:
        forget = data.forget
        assert data.train is ctx.train  # the whole training split (SSD's general data D)
        # built against the model of *that* round: it misclassifies every forget input so
        predicted = predict(model_then, forget.images)
        assert torch.equal(predicted, forget.labels)
        assert not (forget.labels == data.forget_true_labels).any()
        n_clean = 400
        assert len(data.retain) == n_clean + (len(forget) if retain_adversarial else 0)
        clean_part = data.retain.images[:n_clean]
        assert all(img.numpy().tobytes() in train_images for img in clean_part)  # clean data
        if retain_adversarial:
            assert torch.equal(data.retain.images[n_clean:], forget.images)
            assert torch.equal(data.retain.labels[n_clean:], data.forget_true_labels)
        if previous_retain is not None:  # a fresh sample every round
            assert not torch.equal(previous_retain, clean_part)
        previous_retain = clean_part


@pytest.mark.slow
def test_same_seed_same_defended_model(mnist, trained_lenet):
    params = {"rounds": 1, "forget_size": 100, "retain_size": 300, "method": "random_label"}
    models = []
    for seed in (0, 0, 1):
        ctx = _context(mnist, trained_lenet, params, seed=seed)
        models.append(DEFENSES.get("unlearning")(ctx.params).apply(ctx).model)
    assert same(models[0], models[1])
    assert not same(models[0], models[2])


# -- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_unlearning_small_suite_end_to_end(tmp_path, robench_cli):
    out = tmp_path / "out"
    proc = robench_cli("run", "suites/unlearning_small.yaml", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr

    defenses = ["none", "unlearning", "unlearning:scrub"]
    results = pd.read_csv(out / "results.csv")
    assert sorted(set(results["defense"])) == sorted(defenses)
    assert set(results[results["defense"] == "unlearning:scrub"]["defense_name"]) == {
        "unlearning"}
    assert len(results) == len(defenses) * 3  # fgsm at 3 eps
    assert (results["n"] == 300).all()
    assert results[["clean_acc", "robust_acc"]].apply(lambda c: c.between(0, 1).all()).all()
    assert (results[results["defense"] != "none"]["defense_seconds"] > 0).all()

    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["defense"]) == sorted(defenses)

    metrics = pd.read_csv(out / "defense_metrics.csv")
    assert list(metrics.columns[:6]) == ["defense", "seed", "method", "step", "metric", "value"]
    assert set(metrics["defense"]) == {"unlearning", "unlearning:scrub"}
    method_of = metrics.groupby("defense")["method"].unique()
    assert list(method_of["unlearning"]) == ["neggrad_plus"]
    assert list(method_of["unlearning:scrub"]) == ["scrub"]
    default = metrics[metrics["defense"] == "unlearning"]
    assert sorted(default["step"].unique()) == [0, 1, 2]
    assert set(default[default["step"] == 2]["metric"]) == METRICS
    # the last round's monitor scores the defended model on validation images, the harness
    # on test images: the same model, so they differ by sampling noise only (300 images each)
    last = default[(default["step"] == 2) & (default["metric"] == "clean_acc")]["value"].item()
    row = results[(results["defense"] == "unlearning") & (results["eps"] == 0)]
    assert last != row["clean_acc"].item() or last == 1.0  # not the test images
    assert abs(last - row["clean_acc"].item()) < 0.06
