"""The model's output checked at every batch size a run's own loops use (attack ``limit``
images, the diagnostics' sample, training in train mode) before anything is written, and on
the run's real forward passes (``robench.output_guard``) without changing a number."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from robench.config import parse_suite
from robench.errors import UserError
from robench.plan import resolve
from robench.probe import check_baseline, run_batch_sizes, train_batch_sizes

from .conftest import plugin_site
from .test_reliability import one_line_error


def plan_of(**suite):
    raw = {"name": "p", "data": {"dataset": "mnist", "eval_limit": 200},
           "train": {"epochs": 0}, "defenses": [{"name": "none"}],
           "attacks": [{"name": "fgsm", "eps": [0.1]}], **suite}
    return resolve(parse_suite(raw, "p.yaml"), "p.yaml")


SIZES = SimpleNamespace(test=range(10_000), train=range(60_000))  # only their lengths count


@pytest.mark.parametrize(("eval_limit", "limit", "sizes"), [
    (200, 37, {37}),              # the finding: pgd limit 37 of 200 images
    (2500, 1500, {1000, 500}),    # a limit over several evaluation batches: full and last
    (200, 200, set()),            # the whole split: nothing new
])
def test_attack_limits_are_probed(eval_limit, limit, sizes):
    plan = plan_of(data={"dataset": "mnist", "eval_limit": eval_limit},
                   attacks=[{"name": "fgsm", "eps": [0.1]},
                            {"name": "pgd", "eps": [0.1], "limit": limit}])
    assert sizes <= set(run_batch_sizes(plan, SIZES))


def test_the_diagnostics_sample_and_training_batches_are_probed():
    plan = plan_of(data={"dataset": "mnist"}, train={"epochs": 1, "batch_size": 128})
    assert 500 in run_batch_sizes(plan, SIZES)  # robench.diagnostics.GRADIENT_SAMPLE
    n_train = 60_000 - plan.suite.data.validation_size
    assert train_batch_sizes(plan, SIZES) == [128, n_train % 128]
    assert train_batch_sizes(plan_of(), SIZES) == []  # epochs 0: no training


# -- end to end: a plugin model wrong only at one size, or only in train mode ------------------
ODD = '''\
"""A linear classifier that is wrong only {WHEN}."""
import torch
from torch import nn


class OddNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out[:, :9] if {WHEN} else out
'''
SUITE = {"name": "odd", "seed": 0, "data": {"dataset": "mnist", "eval_limit": 200},
         "model": {"name": "odd_net"}, "train": {"epochs": 0},
         "defenses": [{"name": "none"}],
         "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]},
                     {"name": "pgd", "eps": [0.1], "limit": 37,
                      "params": {"steps": 2, "alpha": 0.05}}]}


def run_odd(tmp_path, cli_env, robench_subprocess, when: str, **suite):
    env = plugin_site(tmp_path, "odd_models", ODD.replace("{WHEN}", when), "robench.models",
                      "odd_net = odd_models:OddNet", cli_env)
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **suite}))
    out = tmp_path / "out"
    proc = robench_subprocess("run", str(path), "--out", str(out), "-q", env=env,
                              cwd=tmp_path, timeout=300)
    return path, out, proc


@pytest.mark.slow
def test_a_model_wrong_only_at_an_attack_limit_stops_before_writing(tmp_path, cli_env,
                                                                   robench_subprocess):
    """Hostile-review finding: 9 logits only for a batch of 37 images, with pgd ``limit: 37``:
    exit 0 and pgd@0.1 computed on 9-class output."""
    suite, out, proc = run_odd(tmp_path, cli_env, robench_subprocess, "len(x) == 37")
    line = one_line_error(proc)
    assert line.startswith(f"robench: error: {suite}: model.name: model 'odd_net' "), line
    assert "(37, 9)" in line and "(37, 10)" in line, line
    assert not out.exists()


@pytest.mark.slow
def test_a_model_wrong_only_in_train_mode_stops_before_writing(tmp_path, cli_env,
                                                              robench_subprocess):
    """Hostile-review finding: a model wrong only in train mode crashed in training (an
    IndexError traceback) after run.json and run.log were written."""
    suite, out, proc = run_odd(tmp_path, cli_env, robench_subprocess, "self.training",
                               train={"epochs": 1})
    line = one_line_error(proc)
    assert line.startswith(f"robench: error: {suite}: model.name: model 'odd_net' "), line
    assert "train mode" in line and "(128, 10)" in line, line
    assert not out.exists()


# -- the probe leaves the RNG and nothing else changed ----------------------------------------
class DropoutNet(nn.Module):
    """Draws random numbers in train mode (dropout) and has batch-norm statistics."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(28 * 28)
        self.fc = nn.Linear(28 * 28, num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(self.norm(x.flatten(1))))


def test_the_train_mode_probe_leaves_the_global_rng_as_it_was(synthetic):
    plan = plan_of(data={"dataset": "synthetic", "validation_size": 50},
                   train={"epochs": 1, "batch_size": 64})
    plan = dataclasses.replace(plan, baseline=dataclasses.replace(plan.baseline,
                                                                  model_cls=DropoutNet))
    assert train_batch_sizes(plan, synthetic)  # the train-mode probe runs
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_baseline(plan, synthetic)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_model_failing_in_train_mode_is_one_line(synthetic):
    """Batch norm cannot train on a last batch of one image: the run would crash there."""
    plan = plan_of(data={"dataset": "synthetic", "validation_size": 35},
                   train={"epochs": 1, "batch_size": 88})  # 265 = 3 x 88 + 1
    plan = dataclasses.replace(plan, baseline=dataclasses.replace(plan.baseline,
                                                                  model_cls=DropoutNet))
    with pytest.raises(UserError, match="fails in train mode on \\(1, 1, 28, 28\\)"):
        check_baseline(plan, synthetic)


# -- the guard on the run's own forward passes -------------------------------------------------
class WrongAt(nn.Module):
    """Right logits except for batches of ``size`` images (then 9 columns)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out[:, :9] if len(x) == self.size else out


def attack_spec(name: str = "pgd", **params):
    raw = {"name": name, "eps": [0.1], "params": params} if params else \
        {"name": name, "eps": [0.1]}
    return plan_of(attacks=[raw]).attacks[0]


def test_the_guard_stops_an_attack_on_a_wrong_output(synthetic):
    from robench.progress import Reporter
    from robench.tasks import run_attack_cells

    torch.manual_seed(0)
    model = WrongAt(37).eval()
    data = synthetic.test.head(37)
    with pytest.raises(UserError, match=r"\(37, 9\).*under attack 'fgsm'.*\(37, 10\)"):
        run_attack_cells(attack_spec("fgsm"), model, None, [0.1], data, Reporter(quiet=True),
                         "none / fgsm", num_classes=10)


def test_the_guard_changes_no_number(synthetic):
    """The same outcomes, bit for bit, with the guard as without it (a model drawing random
    numbers in its forward: the guard draws none)."""
    from robench.progress import Reporter
    from robench.tasks import run_attack_cells

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10), nn.Dropout(0.3)).train()
    spec = attack_spec("pgd", steps=3, alpha=0.05)
    runs = []
    for num_classes in (None, 10):
        torch.manual_seed(5)
        runs.append(run_attack_cells(spec, model, None, [0.0, 0.1], synthetic.test,
                                     Reporter(quiet=True), "x", num_classes=num_classes))
        assert not model._forward_hooks  # removed again
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.clean_ok, b.clean_ok) and torch.equal(a.adv_ok, b.adv_ok)


NINE = '''\
"""A defense whose model drops the last class (its output has 9 columns)."""
from torch import nn

from robench.defenses import Defense, DefenseParams, DefenseResult


class Drop(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, :9]


class NineDefense(Defense):
    """Wraps the baseline to return 9 logits."""

    Params = DefenseParams

    def apply(self, ctx):
        return DefenseResult(model=Drop(ctx.model), metrics=ctx.metrics)
'''


@pytest.mark.slow
def test_a_defended_model_with_the_wrong_output_stops_the_run_in_one_line(tmp_path, cli_env,
                                                                         robench_subprocess):
    """The probe sees the baseline only; a defense's model is checked on its real forward
    passes (``robench.output_guard``): 9 logits gave robust accuracies computed over 9
    classes, exit 0."""
    env = plugin_site(tmp_path, "nine_defense", NINE, "robench.defenses",
                      "nine = nine_defense:NineDefense", cli_env)
    suite = tmp_path / "nine.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "model": {"name": "lenet5"},
                                     "defenses": [{"name": "nine"}]}))
    proc = robench_subprocess("run", str(suite), "--out", str(tmp_path / "out"), "-q",
                              env=env, cwd=tmp_path, timeout=300)
    line = one_line_error(proc)
    assert line.startswith("robench: error: [nine]: the model returns") and "(200, 9)" in line
    assert not (tmp_path / "out" / "results.csv").exists()
