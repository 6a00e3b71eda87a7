"""The cost model (robench.estimate): work grows with steps, epochs, rounds, images and eps, and
a suite's work counts every seed and defense."""

from __future__ import annotations

import pytest
import yaml

from robench.estimate import attack_work, baseline_work, defense_work, suite_work
from robench.plan import resolve_raw
from robench.work import Work

TINY = {
    "name": "tiny",
    "data": {"dataset": "mnist", "eval_limit": 60},
    "train": {"epochs": 0},
    "defenses": [{"name": "none"},
                 {"name": "unlearning", "params": {"rounds": 1, "forget_size": 40,
                                                   "retain_size": 80, "monitor_limit": 0}}],
    "attacks": [{"name": "fgsm", "eps": [0.0, 0.1, 0.3]},
                {"name": "pgd", "eps": [0.1, 0.3], "limit": 30, "params": {"steps": 2}}],
}


def plan_of(**changes):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw.update(changes)
    return resolve_raw(raw, "tiny.yaml")


def attack(name, eps=(0.3,), **params):
    return plan_of(attacks=[{"name": name, "eps": list(eps), "params": params}]).attacks[0]


def defense(name, **params):
    return plan_of(defenses=[{"name": name, "params": params}]).defenses[0]


# -- the cost model: monotone in steps, epochs, rounds and images --------------------------------
def test_attack_work_grows_with_steps_restarts_images_and_eps():
    pgd10, pgd40 = attack("pgd", steps=10), attack("pgd", steps=40)
    assert attack_work(pgd40, 100, [0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(attack("pgd", steps=10, restarts=3), 100, [0.3]).grad == \
        3 * attack_work(pgd10, 100, [0.3]).grad
    assert attack_work(pgd10, 200, [0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(pgd10, 100, [0.1, 0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(pgd10, 100, []) == Work()
    # eps 0 is not attacked: only the forward passes that score it
    assert attack_work(pgd10, 100, [0.0, 0.3]).grad == attack_work(pgd10, 100, [0.3]).grad
    square = attack("square", n_queries=1000)
    assert attack_work(square, 100, [0.3]).grad == 0  # queries are forward passes
    assert attack_work(attack("square", n_queries=2000), 100, [0.3]).forward > \
        attack_work(square, 100, [0.3]).forward


def test_shared_sweeps_pay_once_and_bim_pays_its_steps_per_eps():
    fgsm = attack("fgsm", eps=(0.1, 0.2, 0.3))
    assert attack_work(fgsm, 100, [0.1, 0.2, 0.3]).grad == attack_work(fgsm, 100, [0.3]).grad
    bim = attack("bim", eps=(0.1, 0.3))
    assert attack_work(bim, 100, [0.3]).grad > attack_work(bim, 100, [0.1]).grad


def test_autoattack_budget_is_its_components():
    standard, fast = attack("autoattack"), attack("autoattack", version="fast")
    # APGD-CE 100 + APGD-T 9 x 100 + FAB-T 9 x 100 gradient steps, Square 5000 queries
    assert standard.plugin.budget(standard.params) == 1900 + 5000
    assert attack_work(standard, 10, [0.3]) == Work(grad=19_000, forward=50_000 + 20)
    assert attack_work(standard, 10, [0.3]).units > attack_work(fast, 10, [0.3]).units


def test_training_work_grows_with_epochs_steps_rounds_and_images():
    plan = plan_of(train={"epochs": 2})
    assert baseline_work(plan.baseline, 2000).train == 2 * baseline_work(plan.baseline, 1000).train
    assert baseline_work(plan_of(train={"epochs": 3}).baseline, 1000).units > \
        baseline_work(plan.baseline, 1000).units
    config = plan.suite.train

    def cost(spec, n_train=1000):
        return defense_work(spec, config, n_train, 100).units

    pgd5 = defense("adversarial_training", method="pgd", steps=5)
    assert cost(defense("adversarial_training", method="pgd", steps=10)) > cost(pgd5)
    assert cost(defense("adversarial_training", method="pgd", steps=5, epochs=4)) > cost(pgd5)
    assert cost(pgd5, 2000) > cost(pgd5)
    # (steps + 1) training passes per image and epoch, plus the monitor
    assert defense_work(pgd5, config, 1000, 0).train == 2 * 1000 * (5 + 1)
    assert cost(defense("unlearning", rounds=4)) > cost(defense("unlearning", rounds=2))
    assert cost(defense("unlearning", attack="pgd")) > cost(defense("unlearning"))
    assert cost(defense("certified_training", epochs=3)) > \
        cost(defense("certified_training", epochs=1))
    assert cost(defense("none")) == 0 and cost(defense("bit_depth_reduction")) == 0


def test_suite_work_counts_every_seed_and_defense():
    one, three = plan_of(seed=0), plan_of(seeds=[0, 1, 2], seed=None)
    assert suite_work(three, 1000, 100, 60).units == pytest.approx(
        3 * suite_work(one, 1000, 100, 60).units)
    fewer = plan_of(defenses=[{"name": "none"}])
    assert suite_work(fewer, 1000, 100, 60).units < suite_work(one, 1000, 100, 60).units
