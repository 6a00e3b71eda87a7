"""The sanity checks: unit cases on hand-made tables, and a real gradient-masking model flagged
end to end while a normal LeNet-5 passes every check."""

import json

import pandas as pd
import pytest

from robench.checks import run_checks, summarise
from robench.diagnostics import model_diagnostics


def rows(*specs, clean=0.99, n=1000):
    """specs: (attack_label, attack_name, eps, robust_acc[, extra dict])."""
    out = []
    for spec in specs:
        attack, name, eps, acc = spec[:4]
        extra = spec[4] if len(spec) > 4 else {}
        out.append({"defense": "d", "attack": attack, "attack_name": name, "eps": eps,
                    "robust_acc": acc, "clean_acc": clean, "n": n, "backend": "native",
                    "role": "eval", "attack_params": json.dumps(extra.pop("params", {})),
                    **extra})
    return pd.DataFrame(out)


def status_of(frame, check):
    checks = run_checks(frame)
    match = checks[checks["check"].str.startswith(check)]
    assert not match.empty, f"check {check} did not run: {checks}"
    return match["status"].tolist()


def test_healthy_table_passes():
    frame = rows(("fgsm", "fgsm", 0.0, 0.99), ("fgsm", "fgsm", 0.1, 0.7),
                 ("fgsm", "fgsm", 0.3, 0.1), ("pgd", "pgd", 0.1, 0.5), ("pgd", "pgd", 0.3, 0.0))
    healthy = {"zero_grad_fraction": 0.0, "nonfinite_grad_fraction": 0.0,
               "random_output": 0.0, "softmax_output": 0.0}
    checks = run_checks(frame, {"d": healthy})
    assert set(checks["status"]) == {"pass"}
    assert summarise(checks)["status"].tolist() == ["pass"]
    # without diagnostics the gradient check is not silently passed
    unmeasured = run_checks(frame).set_index("check")["status"]
    assert unmeasured["input_gradients"] == "warn"


def test_eps0_not_clean_fails():
    assert status_of(rows(("fgsm", "fgsm", 0.0, 0.95)), "eps0_equals_clean") == ["fail"]


@pytest.mark.parametrize("random_output, eot, expected", [
    (1.0, True, "pass"),    # declared randomness, attacked with EOT: another draw, stated
    (1.0, False, "fail"),   # randomness no EOT attack accounts for
    (0.0, True, "fail"),    # a deterministic model: eps 0 must change nothing
])
def test_eps0_of_a_randomized_defense_attacked_with_eot(random_output, eot, expected):
    frame = rows(("fgsm", "fgsm", 0.0, 0.98),
                 ("pgd", "pgd", 0.3, 0.5, {"params": {"eot_samples": 4 if eot else 1}}))
    diag = {"zero_grad_fraction": 0.0, "nonfinite_grad_fraction": 0.0,
            "random_output": random_output, "softmax_output": 0.0}
    checks = run_checks(frame, {"d": diag}).set_index("check")
    assert checks.loc["eps0_equals_clean", "status"] == expected
    if expected == "pass":
        assert "fgsm 1.0 pp" in checks.loc["eps0_equals_clean", "detail"]
        assert "another draw" in checks.loc["eps0_equals_clean", "detail"]


def test_eps0_of_a_randomized_defense_is_judged_alike_at_every_seed():
    """Diagnostics are measured on the first seed's model only: a later seed's eps-0 row of a
    randomized defense attacked with EOT is another draw too, not a failure."""
    seeds = []
    for seed, eps0 in ((0, 0.99), (1, 0.98), (2, 0.985)):
        frame = rows(("fgsm", "fgsm", 0.0, eps0),
                     ("pgd", "pgd", 0.3, 0.2, {"params": {"eot_samples": 4}}))
        seeds.append(frame.assign(seed=seed))
    diag = {"zero_grad_fraction": 1.0, "nonfinite_grad_fraction": 0.0,
            "random_output": 1.0, "softmax_output": 0.0}
    checks = run_checks(pd.concat(seeds, ignore_index=True), {"d": diag})
    eps0 = checks[checks["check"] == "eps0_equals_clean"]
    assert eps0["status"].tolist() == ["pass"] * 3
    assert eps0["detail"].str.contains("another draw").tolist() == [False, True, True]
    # the diagnostics' own checks still run once (on the seed they were measured on)
    assert (checks["check"] == "input_gradients").sum() == 1
    assert (checks["check"] == "deterministic_output").sum() == 1


def test_eps0_of_a_randomized_defense_may_not_drop_more_than_a_draw_allows():
    frame = rows(("fgsm", "fgsm", 0.0, 0.39),
                 ("pgd", "pgd", 0.3, 0.2, {"params": {"eot_samples": 2}}))
    diag = {"zero_grad_fraction": 0.0, "nonfinite_grad_fraction": 0.0,
            "random_output": 1.0, "softmax_output": 0.0}
    checks = run_checks(frame, {"d": diag}).set_index("check")
    assert checks.loc["eps0_equals_clean", "status"] == "fail"
    assert "fgsm 60.0 pp" in checks.loc["eps0_equals_clean", "detail"]


def test_fgsm_rising_with_eps_warns():
    frame = rows(("fgsm", "fgsm", 0.1, 0.5), ("fgsm", "fgsm", 0.2, 0.6))
    assert status_of(frame, "single_step_monotone") == ["warn"]


def test_pgd_weaker_than_fgsm_warns():
    frame = rows(("fgsm", "fgsm", 0.3, 0.2), ("pgd", "pgd", 0.3, 0.4))
    assert status_of(frame, "iterative_le_single_step") == ["warn"]
    within_tolerance = rows(("fgsm", "fgsm", 0.3, 0.2), ("pgd", "pgd", 0.3, 0.205))
    assert status_of(within_tolerance, "iterative_le_single_step") == ["pass"]


def test_autoattack_above_pgd_uses_subset_noise():
    # 2 pp above PGD on 100 images is within 1 pp + 2 standard errors; on equal n it is not
    frame = rows(("pgd", "pgd", 0.3, 0.50), ("autoattack", "autoattack", 0.3, 0.52, {"n": 100}))
    assert status_of(frame, "ensemble_le_iterative") == ["pass"]
    frame = rows(("pgd", "pgd", 0.3, 0.50), ("autoattack", "autoattack", 0.3, 0.52))
    assert status_of(frame, "ensemble_le_iterative") == ["warn"]


def test_blackbox_stronger_than_whitebox_warns():
    frame = rows(("pgd", "pgd", 0.3, 0.9), ("square", "square", 0.3, 0.3))
    assert status_of(frame, "blackbox_not_stronger") == ["warn"]


def test_blackbox_compared_with_gradient_attacks_not_autoattack():
    # AutoAttack contains Square itself, so only FGSM/PGD are the white-box reference
    frame = rows(("pgd", "pgd", 0.3, 0.95), ("autoattack", "autoattack", 0.3, 0.6),
                 ("square", "square", 0.3, 0.65))
    assert status_of(frame, "blackbox_not_stronger") == ["warn"]


def test_failed_defense_is_listed_last_without_rank():
    from robench.leaderboard import build_leaderboard, to_markdown

    good = rows(("fgsm", "fgsm", 0.0, 0.99), ("fgsm", "fgsm", 0.3, 0.2))
    broken = rows(("fgsm", "fgsm", 0.0, 0.99), ("fgsm", "fgsm", 0.3, 0.9)).assign(defense="b")
    broken.loc[0, "robust_acc"] = 0.5  # eps 0 differs from clean: a failed check
    frame = pd.concat([good, broken], ignore_index=True)
    board = build_leaderboard(frame, summarise(run_checks(frame)))
    assert board["defense"].tolist() == ["d", "b"]   # despite b's higher worst case
    assert board["rank"].tolist() == ["1", ""]          # the failed one has no rank
    assert "| -      | b " in to_markdown(board)


def test_near_chance_model_fails():
    frame = rows(("fgsm", "fgsm", 0.1, 0.1), clean=0.1)
    assert status_of(frame, "clean_accuracy") == ["fail"]


def test_surviving_large_eps_fails():
    frame = rows(("pgd_big", "pgd", 0.5, 0.8, {"role": "check"}))
    assert status_of(frame, "large_eps_reaches_zero") == ["fail"]
    frame = rows(("pgd_big", "pgd", 0.5, 0.16, {"role": "check"}))
    assert status_of(frame, "large_eps_reaches_zero") == ["fail"]
    frame = rows(("pgd_big", "pgd", 0.5, 0.0, {"role": "check"}))
    assert status_of(frame, "large_eps_reaches_zero") == ["pass"]


def test_more_steps_changing_accuracy_warns():
    frame = rows(("pgd", "pgd", 0.3, 0.6, {"params": {"steps": 10}}),
                 ("pgd_long", "pgd", 0.3, 0.3, {"params": {"steps": 100, "restarts": 3}}))
    assert status_of(frame, "converged[pgd]") == ["warn"]


def test_backends_must_agree():
    frame = rows(("fgsm", "fgsm", 0.1, 0.70),
                 ("fgsm[torchattacks]", "fgsm", 0.1, 0.70, {"backend": "torchattacks"}),
                 ("fgsm[art]", "fgsm", 0.1, 0.704, {"backend": "art"}))
    assert status_of(frame, "backend_agree[fgsm:torchattacks]") == ["pass"]
    assert status_of(frame, "backend_agree[fgsm:art]") == ["pass"]
    frame.loc[1, "robust_acc"] = 0.71
    frame.loc[2, "robust_acc"] = 0.72
    assert status_of(frame, "backend_agree[fgsm:torchattacks]") == ["fail"]
    assert status_of(frame, "backend_agree[fgsm:art]") == ["warn"]


def test_diagnostics_of_normal_and_masking_models(trained_lenet, mnist):
    from robench.defenses.bit_depth import Quantize

    normal = model_diagnostics(trained_lenet, mnist.test.head(200))
    assert normal["zero_grad_fraction"] == 0.0 and normal["nonfinite_grad_fraction"] == 0.0
    assert normal["random_output"] == 0.0 and normal["softmax_output"] == 0.0
    masked = model_diagnostics(Quantize(trained_lenet, bits=1), mnist.test.head(200))
    assert masked["zero_grad_fraction"] == 1.0


SUITE = """
name: masking
data: {dataset: mnist, eval_limit: 200, validation_size: 55000}
train: {epochs: 1}
adaptive: off               # the cells counted here are the suite's own
defenses:
  - name: none
  - name: bit_depth_reduction
    params: {bits: 1}
attacks:
  - name: fgsm
    eps: [0.0, 0.1, 0.3]
  - name: pgd
    eps: [0.3]
    params: {steps: 10, alpha: 0.05}
  - name: pgd
    label: pgd_large_eps
    eps: [0.5]
    role: check
    params: {steps: 20, alpha: 0.05}
  - name: square
    eps: [0.3]
    params: {n_queries: 300}
"""


@pytest.mark.slow
def test_masking_defense_is_flagged_and_lenet_passes(tmp_path, mnist_root, monkeypatch):
    from robench.runner import RunOptions, run_suite

    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    suite = tmp_path / "masking.yaml"
    suite.write_text(SUITE)
    out_dir, board = run_suite(suite, RunOptions(data_dir=str(mnist_root), out=str(tmp_path / "o"),
                                                 quiet=True))
    checks = pd.read_csv(out_dir / "checks.csv")
    normal = checks[checks["defense"] == "none"]
    assert set(normal["status"]) == {"pass"}, normal
    masked = checks[checks["defense"] == "bit_depth_reduction"].set_index("check")["status"]
    assert masked["input_gradients"] == "fail"
    assert masked["large_eps_reaches_zero@0.5"] == "fail"
    status = board.set_index("defense")
    assert status.loc["none", "status"] == "pass"
    assert status.loc["bit_depth_reduction", "status"] == "fail"
    assert "input_gradients" in status.loc["bit_depth_reduction", "reason"]


def test_a_new_attack_gets_the_checks_of_its_family(monkeypatch):
    """Checks ask traits, never names: a newly registered iterative attack is held to PGD's
    standards (not weaker than single-step attacks; converges with budget; reaches ~0 at
    eps 0.5) and a new single-step attack to FGSM's (monotone in eps)."""
    from pydantic import Field

    from robench.attacks import ATTACKS, Attack, AttackParams

    class MyParams(AttackParams):
        iterations: int = Field(10, ge=1)

    class MyIterative(Attack):
        """A third-party iterative attack."""

        Params = MyParams
        family = "iterative"

        @classmethod
        def budget(cls, params):
            return params.iterations

    class MyStep(Attack):
        """A third-party single-step attack."""

        family = "single_step"

    monkeypatch.setitem(ATTACKS._entries, "my_iter", MyIterative)
    monkeypatch.setitem(ATTACKS._entries, "my_step", MyStep)
    frame = rows(("my_step", "my_step", 0.1, 0.5), ("my_step", "my_step", 0.3, 0.6),
                 ("my_iter", "my_iter", 0.3, 0.7, {"params": {"iterations": 5}}),
                 ("my_iter_long", "my_iter", 0.3, 0.2, {"params": {"iterations": 50}}),
                 ("my_iter_big", "my_iter", 0.5, 0.5, {"role": "check"}))
    assert status_of(frame, "single_step_monotone[my_step]") == ["warn"]
    assert status_of(frame, "iterative_le_single_step") == ["warn"]
    assert status_of(frame, "converged[my_iter]") == ["warn"]
    assert status_of(frame, "large_eps_reaches_zero") == ["fail"]
    # the same numbers under an unregistered name get none of the family checks
    unknown = frame.assign(attack_name="not_installed")
    names = set(run_checks(unknown)["check"])
    assert not any(n.startswith(("single_step", "iterative", "converged", "large_eps"))
                   for n in names)


def test_robust_above_clean_fails():
    assert status_of(rows(("fgsm", "fgsm", 0.1, 0.5)), "robust_le_clean") == ["pass"]
    assert status_of(rows(("fgsm", "fgsm", 0.1, 0.995), clean=0.99), "robust_le_clean") == [
        "fail"]


def test_a_reduced_autoattack_must_say_so_in_its_label():
    fast = {"params": {"version": "fast"}}
    labelled = rows(("autoattack[version=fast]", "autoattack", 0.3, 0.1, dict(fast)))
    names = set(run_checks(labelled)["check"])
    assert "reduced_variant_labelled" not in names
    hidden = rows(("autoattack", "autoattack", 0.3, 0.1, dict(fast)))
    assert status_of(hidden, "reduced_variant_labelled") == ["fail"]
    standard = rows(("autoattack", "autoattack", 0.3, 0.1))
    assert "reduced_variant_labelled" not in set(run_checks(standard)["check"])


def test_attack_comparisons_use_the_same_images_when_outcomes_exist():
    """On its own 100 images AutoAttack leaves 52 % vs PGD's 50 % on 1000: within the subset
    tolerance. On the 100 images both evaluated PGD leaves 40 %: AutoAttack is weaker, a warn."""
    import numpy as np

    pgd = np.zeros(1000, bool)
    pgd[:40] = True
    pgd[100:560] = True                      # 50 % overall, 40 % on the first 100
    aa = np.zeros(100, bool)
    aa[:52] = True
    frame = rows(("pgd", "pgd", 0.3, pgd.mean()), ("autoattack", "autoattack", 0.3, 0.52,
                                                   {"n": 100}))
    assert status_of(frame, "ensemble_le_iterative") == ["pass"]      # unpaired: noise
    outcomes = pd.concat([
        pd.DataFrame({"defense": "d", "attack": "pgd", "eps": 0.3, "seed": 0,
                      "image": np.arange(1000), "clean_correct": True, "adv_correct": pgd}),
        pd.DataFrame({"defense": "d", "attack": "autoattack", "eps": 0.3, "seed": 0,
                      "image": np.arange(100), "clean_correct": True, "adv_correct": aa})])
    checks = run_checks(frame, outcomes=outcomes).set_index("check")
    assert checks.loc["ensemble_le_iterative", "status"] == "warn"
    assert "on 100 common images" in checks.loc["ensemble_le_iterative", "detail"]


def test_blackbox_check_counts_images_only_the_blackbox_attack_breaks():
    """Net accuracies tie (Square 60 %, PGD 60 %), but Square breaks 30 images PGD leaves
    robust (and PGD 30 others): per image, the black-box attack is stronger somewhere."""
    import numpy as np

    pgd = np.zeros(100, bool)
    pgd[:60] = True
    square = np.zeros(100, bool)
    square[30:90] = True
    frame = rows(("pgd", "pgd", 0.3, 0.6), ("square", "square", 0.3, 0.6), clean=1.0, n=100)
    assert status_of(frame, "blackbox_not_stronger") == ["pass"]  # net accuracies tie
    outcomes = pd.concat([
        pd.DataFrame({"defense": "d", "attack": name, "eps": 0.3, "seed": 0,
                      "image": np.arange(100), "clean_correct": True, "adv_correct": ok})
        for name, ok in (("pgd", pgd), ("square", square))])
    checks = run_checks(frame, outcomes=outcomes).set_index("check")
    assert checks.loc["blackbox_not_stronger@0.3", "status"] == "warn"
    assert "breaks 30 of 100 common images" in checks.loc["blackbox_not_stronger@0.3", "detail"]
    assert checks.loc["rows_match_outcomes", "status"] == "pass"


def test_rows_that_disagree_with_their_outcomes_fail():
    import numpy as np

    ok = np.arange(100) < 40
    frame = rows(("pgd", "pgd", 0.3, 0.45), clean=1.0, n=100)   # the outcomes say 0.40
    outcomes = pd.DataFrame({"defense": "d", "attack": "pgd", "eps": 0.3, "seed": 0,
                             "image": np.arange(100), "clean_correct": True, "adv_correct": ok})
    checks = run_checks(frame, outcomes=outcomes).set_index("check")
    assert checks.loc["rows_match_outcomes", "status"] == "fail"
    good = run_checks(rows(("pgd", "pgd", 0.3, 0.4), clean=1.0, n=100), outcomes=outcomes)
    assert good.set_index("check").loc["rows_match_outcomes", "status"] == "pass"


def test_converged_names_the_weaker_label_and_the_leaderboard_marks_its_column():
    """A BPDA pair (labels ``bpda[of=pgd]``, ``bpda[of=pgd_100x3]``) warns under the weaker
    label, and the leaderboard's upper-bound mark lands on that column."""
    import re

    from robench.leaderboard import CONVERGED_REASON

    frame = rows(("bpda[of=pgd]", "bpda", 0.3, 0.8, {"params": {"steps": 40}}),
                 ("bpda[of=pgd_100x3]", "bpda", 0.3, 0.69,
                  {"params": {"steps": 100, "restarts": 3}, "role": "check"}))
    checks = run_checks(frame)
    warned = checks[checks["check"].str.startswith("converged")]
    assert warned["check"].tolist() == ["converged[bpda[of=pgd]]@0.3"]
    assert warned["status"].tolist() == ["warn"]
    reason = summarise(checks)["reason"].iloc[0]
    assert re.findall(CONVERGED_REASON, reason) == [("bpda[of=pgd]", "0.3")]
