"""The IBP verifier and certified training: bounds that contain sampled outputs, exact interval
arithmetic on a hand-computed network, eps 0 = correct, bad input before any work, the tie check
(no attack beats a certificate), the leaderboard's verified columns, a run through the runner,
and a short IBP training on real MNIST that certifies what a normal LeNet-5 cannot."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robench.attacks import create_attack
from robench.attacks.ibp import logit_box, margin_upper_bounds, trace
from robench.checks import run_checks
from robench.cli import app
from robench.data import Dataset
from robench.defenses import DefenseContext
from robench.defenses.bit_depth import Quantize
from robench.defenses.certified_training import (
    CertifiedTraining,
    CertifiedTrainingParams,
    IBPLoss,
)
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.leaderboard import build_leaderboard
from robench.models import MODELS, Normalize
from robench.plan import resolve_raw
from robench.training import TrainConfig

from .conftest import result_row


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _suite(attacks, model="lenet5", **extra):
    return {"name": "t", "model": {"name": model}, "attacks": attacks, **extra}


# -- the bounds --------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapped", [False, True], ids=["lenet5", "bit_depth_lenet5"])
def test_bounds_contain_the_outputs_of_sampled_points(trained_lenet, batch, wrapped):
    """Every logit and every margin z_j - z_y at 300 random points (uniform and corners) of
    each eps-ball lies within the IBP bounds (also through a rounding input layer)."""
    model = Quantize(trained_lenet, 2) if wrapped else trained_lenet
    net = trace(model, "m")
    x, y = batch[0][:8], batch[1][:8]
    eps = 0.05
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        box = logit_box(net, lo, hi)
        upper = margin_upper_bounds(net, lo, hi, y)
        for i in range(300):
            u = torch.rand(x.shape, generator=g)
            if i % 2:  # a corner of the box: where ReLU boxes are loosest
                u = (u > 0.5).float()
            z = model(lo + u * (hi - lo))
            assert (z >= box.lo - 1e-4).all() and (z <= box.hi + 1e-4).all()
            assert (z - z.gather(1, y[:, None]) <= upper + 1e-4).all()
    # elision is tighter than subtracting the logits' own boxes, and never looser
    naive = box.hi - box.lo.gather(1, y[:, None])
    assert (upper <= naive + 1e-4).all() and (upper < naive - 1e-3).any()


class Tiny(nn.Module):
    """Two inputs, normalised by (x - 0.5) / -0.5 (a negative scale swaps the ends), a 2x2
    linear layer with ReLU and a 2x2 linear output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize(0.5, -0.5)
        self.hidden = nn.Linear(2, 2)
        self.relu = nn.ReLU()
        self.out = nn.Linear(2, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
            self.hidden.bias.copy_(torch.tensor([0.0, 1.0]))
            self.out.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]))
            self.out.bias.copy_(torch.tensor([0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.hidden(self.normalize(x))))


def test_exact_interval_arithmetic_on_a_hand_computed_network():
    # x in [0.5, 1.0]^2 -> normalised n = (x - 0.5) / -0.5 in [-1, 0]^2
    # hidden: n1 - n2 in [-1, 1]; 2 n1 + n2 + 1 in [-2, 1]; ReLU: [0, 1], [0, 1]
    # logits: z0 = r1 + r2 in [0, 2]; z1 = -r1 + 2 r2 + 0.5 in [-0.5, 2.5]
    # margin through the last layer, y = 1: z0 - z1 = 2 r1 - r2 - 0.5 <= 1.5 (naive: 2.5)
    #                                  y = 0: z1 - z0 = -2 r1 + r2 + 0.5 <= 1.5 (naive: 2.5)
    net = trace(Tiny(), "tiny")
    lo, hi = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 1.0]])
    box = logit_box(net, lo, hi)
    torch.testing.assert_close(box.lo, torch.tensor([[0.0, -0.5]]))
    torch.testing.assert_close(box.hi, torch.tensor([[2.0, 2.5]]))
    torch.testing.assert_close(margin_upper_bounds(net, lo, hi, torch.tensor([1])),
                               torch.tensor([[1.5, 0.0]]))
    torch.testing.assert_close(margin_upper_bounds(net, lo, hi, torch.tensor([0])),
                               torch.tensor([[0.0, 1.5]]))
    # a smaller ball certifies: x = (0.9, 0.1), eps 0.05 -> n1 in [-0.9, -0.7], n2 in
    # [0.7, 0.9]; hidden [-1.8, -1.4] -> 0 and [-0.1, 0.5] -> [0, 0.5]; z1 - z0 <= 1.0,
    # z0 - z1 = 2 r1 - r2 - 0.5 <= -0.5 < 0: class 1 certified (it is the prediction)
    x = torch.tensor([[0.9, 0.1]])
    torch.testing.assert_close(margin_upper_bounds(net, x - 0.05, x + 0.05, torch.tensor([1])),
                               torch.tensor([[-0.5, 0.0]]))
    verifier = create_attack("ibp", Tiny())
    assert verifier.certify(x, torch.tensor([1]), 0.05).tolist() == [True]
    assert verifier.certify(x, torch.tensor([0]), 0.05).tolist() == [False]


def test_eps_zero_certifies_exactly_the_correctly_classified_images(trained_lenet, mnist):
    data = mnist.test.head(1000)
    verifier = create_attack("ibp", trained_lenet, {"batch_size": 300})  # 4 capped chunks
    at_zero, small = evaluate_attack(trained_lenet, verifier, [0.0, 0.01], data)
    with torch.no_grad():
        correct = (trained_lenet(data.images).argmax(1) == data.labels).cpu()
    assert torch.equal(at_zero.adv_ok, correct) and torch.equal(at_zero.clean_ok, correct)
    assert 0.8 < at_zero.robust_acc == at_zero.clean_acc
    assert not (small.adv_ok & ~at_zero.adv_ok).any()      # a larger ball certifies no more
    assert small.robust_acc < at_zero.robust_acc


def test_verifier_leaves_mode_and_gradients_alone_and_crafts_no_examples(trained_lenet, batch):
    x, y = batch
    trained_lenet.train()
    try:
        verifier = create_attack("ibp", trained_lenet)
        verifier.certify(x[:50], y[:50], 0.1)
        assert trained_lenet.training
        assert all(p.grad is None for p in trained_lenet.parameters())
        with pytest.raises(TypeError, match="verifier"):
            verifier(x[:5], y[:5], 0.1)
    finally:
        trained_lenet.eval()


# -- bad input, before any work ---------------------------------------------------------------
class WithGelu(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.GELU(),
                                  nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_unsupported_layer_is_one_user_error_naming_layer_and_model(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "gelu_net", WithGelu)
    with pytest.raises(UserError) as err:
        resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}, {"name": "ibp", "eps": [0.1]}],
                           model="gelu_net"), "s.yaml")
    text = str(err.value)
    assert "\n" not in text and "s.yaml: attacks[1]" in text
    assert "body.2 (GELU)" in text and "'gelu_net'" in text
    # the same model without a verifier is fine
    resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}], model="gelu_net"), "s.yaml")


def test_verifier_rows_are_bounds_and_a_role_for_them_is_an_error():
    plan = resolve_raw(_suite([{"name": "ibp", "eps": [0.1]}]), "s.yaml")
    assert plan.attacks[0].role == "bound"
    with pytest.raises(UserError, match=r"attacks\[0\]\.role.*verifier"):
        resolve_raw(_suite([{"name": "ibp", "eps": [0.1], "role": "check"}]), "s.yaml")


def test_crown_without_auto_lirpa_fails_in_one_line_nothing_written(tmp_path, mnist_root):
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("auto_LiRPA is installed here")
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps(_suite([{"name": "crown", "eps": [0.1]}])))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(out),
                                      "--data-dir", str(mnist_root)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "auto_LiRPA" in lines[0] and "pip install" in lines[0]
    assert "attacks[0]" in lines[0]
    assert not out.exists()


# -- the tie check and the leaderboard --------------------------------------------------------
def _table(pgd_acc: float, n: int = 4):
    rows = [result_row("d", "fgsm", 0.1, 1.0, 0.75, n=n),
            result_row("d", "pgd", 0.1, 1.0, pgd_acc, n=n),
            result_row("d", "ibp", 0.1, 1.0, 0.5, n=n, role="bound"),
            result_row("d", "ibp", 0.5, 1.0, 0.0, n=n, role="bound")]
    return pd.DataFrame(rows)


def _outcomes(cells: dict[str, list[bool]], eps: float = 0.1) -> pd.DataFrame:
    return pd.DataFrame([{"defense": "d", "attack": a, "eps": eps, "seed": 0, "image": i,
                          "clean_correct": True, "adv_correct": ok}
                         for a, flags in cells.items() for i, ok in enumerate(flags)])


def _bounds_status(results, outcomes=None):
    checks = run_checks(results, None, outcomes).set_index("check")
    return checks.loc["bounds_hold[ibp]", "status"], checks.loc["bounds_hold[ibp]", "detail"]


def test_tie_check_fails_when_an_attack_breaks_a_certified_image():
    # images 0 and 1 certified; pgd breaks image 1 although its accuracy (0.5) equals ibp's
    bad = _outcomes({"fgsm": [True, True, True, False], "pgd": [True, False, True, False],
                     "ibp": [True, True, False, False]})
    status, detail = _bounds_status(_table(0.5), bad)
    assert status == "fail" and "pgd@0.1 breaks 1 of the 2 images ibp certified" in detail
    good = _outcomes({"fgsm": [True, True, True, False], "pgd": [True, True, False, False],
                      "ibp": [True, True, False, False]})
    assert _bounds_status(_table(0.5), good)[0] == "pass"
    # without per-image outcomes: an attack accuracy below the verified one fails
    assert _bounds_status(_table(0.25))[0] == "fail"
    assert _bounds_status(_table(0.5))[0] == "pass"
    # and a failed check takes the defense out of the ranking
    board = build_leaderboard(_table(0.25), pd.DataFrame(
        [{"defense": "d", "status": "fail", "reason": "bounds_hold[ibp]"}]))
    assert board.loc[0, "rank"] == ""


def test_leaderboard_shows_verified_next_to_the_worst_case_and_keeps_it_out():
    board = build_leaderboard(_table(0.5))
    cols = list(board.columns)
    # the verifier's eps 0.5 is not the threat eps, its rows are not attack columns
    assert "worst@0.1" in cols and "ibp@0.1" not in cols
    assert cols.index("verified@0.1") + 1 == cols.index("verified@0.5")
    assert cols.index("verified@0.5") + 1 == cols.index("worst@0.1")
    row = board.iloc[0]
    assert row["verified@0.1"] == 0.5 and row["worst@0.1"] == 0.5   # min(fgsm, pgd), not ibp
    lower = build_leaderboard(_table(0.5).assign(
        robust_acc=lambda f: f["robust_acc"].where(f["attack"] != "ibp", 0.0)))
    assert lower.iloc[0]["worst@0.1"] == 0.5                          # bounds never lower it
    plain = build_leaderboard(_table(0.5).query("attack != 'ibp'"))
    assert not any(c.startswith("verified") for c in plain.columns)


# -- through the runner, on real MNIST ---------------------------------------------------------
@pytest.mark.slow
def test_ibp_rows_and_certificates_through_the_runner(tmp_path, mnist, monkeypatch):
    from robench.outcomes import read_outcomes
    from robench.outdir import OutputFolder
    from robench.runner import RunData, Runner, RunOptions

    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    plan = resolve_raw(_suite([{"name": "fgsm", "eps": [0.0, 0.1]},
                               {"name": "ibp", "eps": [0.0, 0.01, 0.1]}],
                              train={"epochs": 1}, device="cpu",
                              data={"eval_limit": 300, "validation_size": 500}),
                       "s.yaml")
    small = Dataset(name="mnist", train=mnist.train.head(3000), test=mnist.test, num_classes=10)
    with OutputFolder.open(tmp_path / "out") as folder:
        board = Runner(plan, folder, RunOptions(quiet=True)).run(RunData.of(plan, small))
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    ibp = results[results["attack"] == "ibp"].set_index("eps")
    assert set(ibp["role"]) == {"bound"} and (ibp["n"] == 300).all()
    assert ibp.loc[0.0, "robust_acc"] == ibp.loc[0.0, "clean_acc"]
    assert ibp.loc[0.1, "robust_acc"] == 0.0                         # a normal LeNet-5
    outcomes = read_outcomes(tmp_path / "out")
    cells = outcomes[outcomes["attack"] == "ibp"]
    assert len(cells) == 3 * 300
    zero = cells[cells["eps"] == 0.0]
    assert zero["adv_correct"].tolist() == zero["clean_correct"].tolist()
    checks = pd.read_csv(tmp_path / "out" / "checks.csv").set_index("check")
    assert checks.loc["bounds_hold[ibp]", "status"] == "pass"
    assert {"verified@0", "verified@0.01", "verified@0.1", "worst@0.1"} <= set(board.columns)


# -- certified training -----------------------------------------------------------------------
def test_schedule_warms_up_then_ramps_eps_and_kappa_together():
    params = CertifiedTrainingParams(eps=0.2, warmup_epochs=1, rampup_epochs=2)
    loss = IBPLoss(params, net=None, epochs=5, steps_per_epoch=10)
    seen = []
    for _ in range(40):
        seen.append(loss.schedule())
        loss.batches += 1
    assert seen[:11] == [(0.0, 1.0)] * 11                      # warm-up: clean loss only
    assert seen[20] == pytest.approx((0.11, 0.75))             # half way: eps_train = 1.1 eps
    assert seen[30:] == [pytest.approx((0.22, 0.5))] * 10
    defaults = IBPLoss(CertifiedTrainingParams(), None, epochs=5, steps_per_epoch=30)
    assert (defaults.warmup_batches, defaults.rampup_batches) == (30, 90)


@pytest.mark.parametrize(("params", "fragment"), [
    ({"method": "crown_ibp"}, "method"), ({"eps": 0.0}, "eps"), ({"kappa_final": 1.5}, "kappa"),
    ({"train_eps_factor": 0.5}, "train_eps_factor"), ({"warmup": 1}, "warmup")])
def test_bad_params_fail_at_suite_load(params, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}], defenses=[
            {"name": "certified_training", "params": params}]), "s.yaml")


@pytest.mark.slow
def test_short_ibp_training_certifies_what_a_normal_lenet_cannot(mnist, trained_lenet):
    """10 000 real training images, 5 epochs (about 35 s on one core): verified accuracy at
    eps 0.1 on 1000 test images is far above a normally trained LeNet-5's 0 %."""
    torch.manual_seed(0)
    from robench.models import LeNet5

    params = CertifiedTrainingParams(eps=0.1, epochs=5, warmup_epochs=1, rampup_epochs=3,
                                     monitor_limit=0)
    ctx = DefenseContext(model=LeNet5(), train=mnist.train.head(10_000),
                         validation=mnist.train.subset(torch.arange(50_000, 51_000)),
                         params=params, seed=0,
                         device=torch.device("cpu"), train_config=TrainConfig(epochs=5))
    started = time.perf_counter()
    model = CertifiedTraining(params).apply(ctx).model
    seconds = time.perf_counter() - started
    data = mnist.test.head(1000)
    trained, = evaluate_attack(model, create_attack("ibp", model), [0.1], data)
    normal, = evaluate_attack(trained_lenet, create_attack("ibp", trained_lenet), [0.1], data)
    pgd, = evaluate_attack(model, create_attack("pgd", model, {"steps": 20, "alpha": 0.0125}),
                           [0.1], data)
    print(f"IBP-trained: clean {trained.clean_acc:.3f}, verified@0.1 {trained.robust_acc:.3f}, "
          f"pgd20@0.1 {pgd.robust_acc:.3f}; normal LeNet-5 verified@0.1 {normal.robust_acc:.3f}"
          f" (n = 1000; training {seconds:.0f} s)")
    assert normal.robust_acc == 0.0
    assert trained.robust_acc >= 0.5
    assert pgd.robust_acc >= trained.robust_acc                    # the tie, on real data
    assert not (trained.adv_ok & ~(pgd.clean_ok & pgd.adv_ok)).any()


def test_a_bounded_method_argument_is_refused_not_bounded_too_tightly():
    """``f.clamp(min=h)`` with h bounded: one value for both ends of h would give bounds that
    sampled points escape, so the verifier refuses the model instead."""

    class ClampBy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 10), nn.Linear(4, 10)

        def forward(self, x):
            return self.a(x.flatten(1)).clamp(self.b(x.flatten(1)))

    with pytest.raises(UserError, match="a bounded value is an argument of .clamp"):
        net = trace(ClampBy(), "clamp_by")
        x = torch.rand(2, 1, 2, 2)
        logit_box(net, (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1))


class Squares(nn.Module):
    """h * h: the product of two bounded values, which interval arithmetic here refuses."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 16), nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        return self.fc2(h * h)


def test_models_the_bounds_cannot_handle_fail_at_plan_time(monkeypatch):
    """Found before any work, naming the entry: an operation that only fails on intervals,
    and certified training on a model its bounds do not support."""
    monkeypatch.setitem(MODELS._entries, "squares", Squares)
    monkeypatch.setitem(MODELS._entries, "gelu_net", WithGelu)
    with pytest.raises(UserError, match=r"s.yaml: attacks\[1\]: .*mul"):
        resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}, {"name": "ibp", "eps": [0.1]}],
                           model="squares"), "s.yaml")
    with pytest.raises(UserError, match=r"s.yaml: defenses\[1\]: .*GELU"):
        resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}], model="gelu_net",
                           defenses=[{"name": "none"}, {"name": "certified_training"}]),
                    "s.yaml")
    with pytest.raises(UserError, match="warmup_epochs 5 >= epochs 1"):
        resolve_raw(_suite([{"name": "fgsm", "eps": [0.1]}], defenses=[
            {"name": "certified_training", "params": {"warmup_epochs": 5, "epochs": 1}}]),
            "s.yaml")
