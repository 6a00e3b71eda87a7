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


# -- measured savings: the active set and AutoAttack's survivors, as a range ------------------
def test_active_set_and_autoattack_savings_lower_the_typical_work():
    from robench.estimate import SAVINGS, attack_work_range

    for name, params in [("pgd", {"steps": 40}), ("bim", {"steps": 10}), ("autoattack", {}),
                         ("square", {"n_queries": 100})]:
        spec = attack(name, **params)
        upper = attack_work(spec, 100, [0.3])
        work = attack_work_range(spec, 100, [0.3])
        assert work.low.units < work.typical.units < upper.units <= work.high.units
        low, typical, high = SAVINGS[name]
        assert high >= 1  # a robust model's cells: at least the upper bound
        scoring = Work(forward=2 * 100)  # the clean pass and the examples' pass: always paid
        assert work.typical == (upper - scoring).scaled(typical) + scoring
        assert work.low == (upper - scoring).scaled(low) + scoring
        assert work.high == (upper - scoring).scaled(high) + scoring


def test_no_saving_without_the_active_set_or_for_single_step_attacks():
    from robench.estimate import attack_work_range

    for spec in [attack("pgd", steps=40, early_stop=False), attack("bim", early_stop=False),
                 attack("fgsm", eps=(0.1, 0.3))]:
        work = attack_work_range(spec, 100, spec.eps)
        assert work.low == work.typical == work.high == attack_work(spec, 100, spec.eps)


def test_suite_work_counts_attacks_at_their_typical_work():
    """The run's overall bar (suite_work) counts what the plan calls typical."""
    active = plan_of(attacks=[{"name": "pgd", "eps": [0.3], "params": {"steps": 40}}])
    plain = plan_of(attacks=[{"name": "pgd", "eps": [0.3],
                              "params": {"steps": 40, "early_stop": False}}])
    assert suite_work(active, 1000, 100, 60).grad < suite_work(plain, 1000, 100, 60).grad


def test_a_range_is_low_to_high_and_a_busy_calibration_widens_it_by_the_threads():
    from robench.estimate import Calibration, WorkRange, range_text

    work = WorkRange(Work(grad=10), Work(grad=40), Work(grad=100))
    idle = Calibration(Work(0.1, 0.1, 0.1), "cpu", 2, 128, 1000, load=0.2, cores=2)
    busy = Calibration(Work(0.1, 0.1, 0.1), "cpu", 2, 128, 1000, load=3.2, cores=2, busy=True)
    assert idle.seconds_range(work) == pytest.approx((1.0, 4.0, 10.0))
    assert busy.seconds_range(work) == pytest.approx((0.5, 2.0, 10.0))  # 2 idle threads
    training = WorkRange(Work(train=10), Work(train=10), Work(train=10))
    assert busy.seconds_range(training) == pytest.approx((0.5, 1.0, 1.0))
    assert idle.busy_text() is None
    assert busy.busy_text().startswith("the machine is busy (load 3.2 on 2 cores)")
    assert range_text(60, 120, 600) == "2 min 00 s (1 min 00 s - 10 min 00 s)"
    assert range_text(5, 5, 5) == "5 s"


@pytest.mark.parametrize("load,busy", [(3.2, True), (0.3, False)])
def test_calibration_on_a_busy_machine_times_one_thread_and_says_so(
        synthetic, monkeypatch, load, busy):
    import torch

    from robench import estimate

    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(estimate.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(estimate, "CALIBRATION_SECONDS", 0.0)  # one timed call each
    threads_seen: list[int] = []
    timed = estimate._per_image
    monkeypatch.setattr(estimate, "_per_image", lambda *a: (
        threads_seen.append(torch.get_num_threads()), timed(*a))[1])
    threads = torch.get_num_threads()
    plan = plan_of(data={"dataset": "synthetic", "eval_limit": 60})
    cal = estimate.calibrate(plan, synthetic.train, synthetic.test, 10, torch.device("cpu"))
    assert cal.busy is busy and cal.load == load and cal.cores == 2
    assert threads_seen == ([1] * 3 if busy else [threads] * 3)
    assert torch.get_num_threads() == threads  # put back
    assert (cal.busy_text() is not None) is busy
    assert all(p > 0 for p in cal.per_pass)


def test_plan_says_when_the_machine_is_busy(tmp_path, robench_cli, monkeypatch):
    from robench import estimate

    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (3.2, 3.0, 2.0))
    monkeypatch.setattr(estimate.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(estimate, "CALIBRATION_SECONDS", 0.0)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    done = robench_cli("plan", str(suite), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # rich wraps long lines
    assert ("note: the machine is busy (load 3.2 on 2 cores): the estimate assumes an idle "
            "machine") in text
    assert "1 thread of the run's" in text
    assert not (tmp_path / "out").exists()


# -- randomized defenses: votes, eval_samples, EOT and the smoothing verifier -------------------
def test_a_vote_prices_every_copy_and_eot_multiplies_the_gradients():
    """On gaussian_noise (votes v, eval_samples e) a cell's attack passes cost v classifier
    passes each and its scoring passes v * e; EOT k multiplies the gradients by k."""
    votes, samples = 4, 3
    plan = plan_of(adaptive="off",
                   defenses=[{"name": "none"},
                             {"name": "gaussian_noise", "params": {"votes": votes,
                                                                   "eval_samples": samples}}],
                   attacks=[{"name": "pgd", "eps": [0.1, 0.3], "params": {"steps": 5}},
                            {"name": "pgd", "label": "pgd_eot", "eps": [0.1, 0.3],
                             "params": {"steps": 5, "eot_samples": 6}}])
    none, noisy = plan.defenses
    pgd, eot = plan.attacks
    plain = attack_work(pgd, 100, pgd.eps, none)
    assert plain == attack_work(pgd, 100, pgd.eps)  # a deterministic defense: as before
    voted = attack_work(pgd, 100, pgd.eps, noisy)
    assert voted.grad == votes * plain.grad
    assert voted.forward == votes * samples * plain.forward
    assert attack_work(eot, 100, eot.eps, noisy).grad == 6 * voted.grad
    # PGD's active set saves steps on a deterministic model; a vote turns it off (the plain
    # loop on every image), so its typical work there is its upper bound
    from robench.estimate import attack_work_range

    assert attack_work_range(pgd, 100, pgd.eps, none).typical.grad < plain.grad
    assert attack_work_range(pgd, 100, pgd.eps, noisy).typical == voted


def test_smoothing_pays_its_n0_plus_n_base_passes_once_and_scores_the_clean_vote():
    from robench.estimate import passes_text

    plan = plan_of(adaptive="off", defenses=[{"name": "gaussian_noise", "params": {"votes": 8,
                                                                   "eval_samples": 5}}],
                   attacks=[{"name": "smoothing", "eps": [0.0, 0.5, 1.0],
                             "params": {"n0": 100, "n": 1000}}])
    spec, noisy = plan.attacks[0], plan.defenses[0]
    # CERTIFY samples the base classifier itself (not the vote); the clean pass is a vote
    assert attack_work(spec, 10, spec.eps, noisy) == Work(forward=10 * (1100 + 8 * 5))
    assert passes_text(spec, spec.eps, noisy) == "1 140 forward passes per image"


@pytest.mark.slow
def test_plan_states_the_passes_per_image_of_a_smoothing_cell(tmp_path, robench_cli,
                                                               monkeypatch, cli_env):
    from robench import estimate

    monkeypatch.setattr(estimate, "CALIBRATION_SECONDS", 0.0)
    raw = dict(TINY, adaptive="off",
               defenses=[{"name": "gaussian_noise", "params": {"votes": 4}}],
               attacks=[{"name": "smoothing", "eps": [0.5], "params": {"n0": 10, "n": 100}},
                        {"name": "fgsm", "eps": [0.1]}])
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(raw))
    # a wide console, so no table cell wraps the phrase (output is not a terminal here)
    done = robench_cli("plan", str(suite), "--out", str(tmp_path / "out"),
                       env={**cli_env, "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(130 forward passes per image)" in text      # 10 + 100 + 4 votes x 5 samples
    assert "(4 gradient + 40 forward passes per image)" in text  # fgsm on the vote


def test_pass_counts_of_a_plugin_with_odd_params_fall_back_to_one_pass():
    """A randomized defense whose votes/eval_samples are None, 0 or not integers is priced as
    one pass (never a crash, never a zero-cost cell)."""
    from types import SimpleNamespace

    from robench.estimate import pass_multipliers

    plugin = SimpleNamespace(randomized=True)
    for votes, samples in [(None, None), (0, 0), ("auto", 2.5), (True, -3)]:
        spec = SimpleNamespace(plugin=plugin, randomized=True,
                               params=SimpleNamespace(votes=votes, eval_samples=samples))
        assert pass_multipliers(spec) == (1, 1)
    spec = SimpleNamespace(plugin=plugin, randomized=True,
                           params=SimpleNamespace(votes=8, eval_samples=3))
    assert pass_multipliers(spec) == (8, 3)
