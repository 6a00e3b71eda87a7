"""Attacks that expose FGSM-specific masking: R+FGSM and BIM cross-checked against torchattacks
on the same model and inputs, and the transfer attack (crafted on a source model of the suite,
never on the target) through the plan, the runner and the checks."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torchattacks
from torch.nn import functional as F
from typer.testing import CliRunner

from robench.attacks import create_attack
from robench.attacks.bim import paper_steps
from robench.checks import run_checks
from robench.cli import app
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.models import LeNet5
from robench.plan import resolve_raw
from robench.training import predict

from .conftest import accuracy_of as _acc

# -- R+FGSM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_rfgsm_matches_torchattacks_with_the_same_random_signs(trained_lenet, batch, eps,
                                                               monkeypatch):
    """torchattacks' RFGSM with steps=1 and alpha=eps/2 is Tramèr et al.'s R+FGSM at the
    paper's alpha; it draws sign(randn) from the global generator, so it is given our signs."""
    x, y = batch
    ours = create_attack("rfgsm", trained_lenet, seed=3)(x, y, eps)
    signs = create_attack("rfgsm", trained_lenet, seed=3).random_signs(x, eps)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    monkeypatch.setattr(torch, "randn_like", lambda like: signs.clone())
    ref = torchattacks.RFGSM(trained_lenet, eps=eps, alpha=eps / 2, steps=1)(x, y)
    # equal, except where the gradient at the random step is float noise (|g| ~ 1e-14 where
    # the largest is ~1e-3): its sign there depends on the order of float sums (memory format,
    # threads), a tie either library may break either way
    differ = (ours - ref).abs() > 1e-6
    start = (x + eps / 2 * signs).clamp(0, 1).requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(trained_lenet(start), y), start)
    assert int(differ.sum()) <= 10, int(differ.sum())
    assert (grad[differ].abs() <= 1e-9 * grad.abs().max()).all(), grad[differ]
    assert _acc(trained_lenet, ours, y) < _acc(trained_lenet, x, y)  # a real attack


def test_rfgsm_without_random_step_is_fgsm_and_the_step_is_random(trained_lenet, batch):
    x, y = batch
    fgsm = create_attack("fgsm", trained_lenet)(x, y, 0.2)
    plain = create_attack("rfgsm", trained_lenet, {"alpha_fraction": 0.0})(x, y, 0.2)
    assert torch.equal(plain, fgsm)
    a = create_attack("rfgsm", trained_lenet, seed=1)(x, y, 0.2)
    b = create_attack("rfgsm", trained_lenet, seed=2)(x, y, 0.2)
    assert not torch.equal(a, b) and not torch.equal(a, fgsm)


def test_rfgsm_random_step_is_per_image(trained_lenet, batch):
    x, y = batch
    ids = list(range(500, 540))
    attack = create_attack("rfgsm", trained_lenet, seed=4)
    attack.set_images(ids)
    whole = attack(x[:40], y[:40], 0.3)
    attack.set_images(ids[10:20])
    assert torch.equal(attack(x[10:20], y[10:20], 0.3), whole[10:20])


# -- BIM ------------------------------------------------------------------------------------------


def test_bim_paper_step_count_is_torchattacks_rule(trained_lenet):
    assert paper_steps(0.3) == 80 and paper_steps(0.1) == 29 and paper_steps(0.001) == 1
    for eps in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5):
        assert paper_steps(eps) == torchattacks.BIM(trained_lenet, eps=eps, steps=0).steps


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_bim_matches_torchattacks(trained_lenet, batch, eps, monkeypatch):
    """Same update and clipping as torchattacks' BIM (paper defaults: alpha 1/255, steps by the
    paper's rule). With torchattacks' mean cross-entropy the images are bit-identical; robench's
    summed loss differs only where the mean's gradient underflows to 0 (a few images)."""
    import robench.attacks.bim as bim

    x, y = batch[0][:300], batch[1][:300]
    ref = torchattacks.BIM(trained_lenet, eps=eps, alpha=1 / 255, steps=0)(x, y)
    # the plain loop per image (the active-set default stops fooled images early)
    ours = create_attack("bim", trained_lenet, {"early_stop": False})(x, y, eps)
    differ = (ours != ref).flatten(1).any(1)
    assert differ.float().mean().item() <= 0.01
    assert abs(_acc(trained_lenet, ours, y) - _acc(trained_lenet, ref, y)) <= 0.002
    assert _acc(trained_lenet, create_attack("bim", trained_lenet)(x, y, eps), y) <= \
        _acc(trained_lenet, ours, y)

    def mean_loss_gradient(self, x, y):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x), y), x)
        return grad

    # every gradient attack steps along Attack.input_gradient (EOT lives there)
    monkeypatch.setattr(bim.BIM, "input_gradient", mean_loss_gradient)
    assert torch.equal(create_attack("bim", trained_lenet, {"early_stop": False})(x, y, eps), ref)


def test_bim_explicit_steps_and_alpha_match_torchattacks(trained_lenet, batch):
    x, y = batch[0][:300], batch[1][:300]
    ours = create_attack("bim", trained_lenet, {"steps": 7, "alpha": 0.02})(x, y, 0.1)
    ref = torchattacks.BIM(trained_lenet, eps=0.1, alpha=0.02, steps=7)(x, y)
    assert abs(_acc(trained_lenet, ours, y) - _acc(trained_lenet, ref, y)) <= 0.002


@pytest.mark.slow
def test_bim_is_no_weaker_than_fgsm(trained_lenet, mnist):
    data = mnist.test.head(300)
    for eps in (0.1, 0.15):
        fgsm, = evaluate_attack(trained_lenet, create_attack("fgsm", trained_lenet), [eps], data)
        bim, = evaluate_attack(trained_lenet, create_attack("bim", trained_lenet), [eps], data)
        assert bim.robust_acc < fgsm.robust_acc


@pytest.mark.parametrize("name,params", [
    ("rfgsm", {}), pytest.param("bim", {}, marks=pytest.mark.slow), ("bim", {"steps": 3}),
    ("transfer", {"attack_params": {"steps": 3}})])
@pytest.mark.parametrize("eps", [0.0, 0.07, 0.3])
def test_perturbation_within_eps_and_range(trained_lenet, batch, name, params, eps):
    x, y = batch[0][:200], batch[1][:200]
    attack = create_attack(name, trained_lenet, params)
    if attack.needs_source_model:
        attack.set_source(other_model())
    x_adv = attack(x, y, eps)
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    if eps == 0:
        assert torch.equal(x_adv, x)


# -- transfer: the attack ------------------------------------------------------------------------


def other_model() -> torch.nn.Module:
    """A LeNet-5 with other weights (untrained, seed 1): its gradients differ from the target's."""
    torch.manual_seed(1)
    return LeNet5().eval()


class GradientSpy(torch.nn.Module):
    """Wraps a model and records every forward that could build a graph to its input."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.graph_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in self.model.parameters())):
            self.graph_calls += 1
        return self.model(x)


@pytest.mark.slow
def test_transfer_crafts_on_the_source_and_never_differentiates_the_target(trained_lenet, mnist):
    source = copy.deepcopy(trained_lenet)
    target = GradientSpy(other_model())
    for p in target.parameters():
        p.requires_grad_(True)
    params = {"attack_params": {"steps": 5, "alpha": 0.05}}
    transfer = create_attack("transfer", target, params, seed=11)
    transfer.set_source(source)
    data = mnist.test.head(300)
    eps_list = [0.1, 0.3]
    outcomes = evaluate_attack(target, transfer, eps_list, data, batch_size=128)
    assert target.graph_calls == 0
    assert all(p.grad is None for p in target.parameters())

    # the examples are exactly those PGD crafts on the source directly (same seed and images;
    # the final iterate, as transfer crafts by default)
    direct = create_attack("pgd", source, {**params["attack_params"], "early_stop": False},
                           seed=11)
    direct.set_images(data.ids.tolist())
    crafted = dict(direct.sweep(data.images, data.labels, eps_list))
    transfer.set_images(data.ids.tolist())
    assert all(torch.equal(x_adv, crafted[eps])
               for eps, x_adv in transfer.sweep(data.images, data.labels, eps_list))
    for outcome in outcomes:
        expected = predict(target, crafted[outcome.eps]) == data.labels
        assert torch.equal(outcome.adv_ok, expected)
    # and they are not the target's own white-box examples
    white = create_attack("pgd", target, params["attack_params"], seed=11)(
        data.images, data.labels, 0.3)
    assert not torch.equal(white, crafted[0.3])


def test_transfer_without_a_source_model_says_so(trained_lenet, batch):
    with pytest.raises(RuntimeError, match="set_source"):
        create_attack("transfer", trained_lenet)(batch[0][:5], batch[1][:5], 0.1)


# -- transfer: the plan ---------------------------------------------------------------------------

SUITE = {"name": "t", "data": {"dataset": "mnist", "eval_limit": 50}, "train": {"epochs": 0},
         "defenses": [{"name": "bit_depth_reduction", "params": {"bits": 1}}, {"name": "none"}],
         "attacks": [{"name": "fgsm", "eps": [0.1]}, {"name": "transfer", "eps": [0.1]}]}


def suite(transfer_params: dict | None = None, defenses: list | None = None) -> dict:
    out = copy.deepcopy(SUITE)
    if transfer_params is not None:
        out["attacks"][1]["params"] = transfer_params
    if defenses is not None:
        out["defenses"] = defenses
    return out


def test_transfer_source_defaults_to_the_undefended_entry():
    plan = resolve_raw(suite(defenses=[{"name": "bit_depth_reduction"},
                                       {"name": "none", "label": "baseline"}]), "s.yaml")
    fgsm, transfer = plan.attacks
    assert fgsm.source is None and transfer.source == "baseline"
    assert transfer.label == "transfer"
    explicit = resolve_raw(suite({"source": "bit_depth_reduction"}), "s.yaml").attacks[1]
    assert explicit.source == "bit_depth_reduction"
    assert explicit.label == "transfer[source=bit_depth_reduction]"


def test_transfer_cells_change_with_their_source_defense():
    """The source model shapes a transfer cell's numbers: its defense's cache key joins the
    transfer's code hash (and nothing else's)."""
    a = resolve_raw(suite({"source": "bit_depth_reduction"}), "s.yaml")
    changed = suite({"source": "bit_depth_reduction"})
    changed["defenses"][0]["params"] = {"bits": 2}
    b = resolve_raw(changed, "s.yaml")
    assert a.attacks[1].code_hash != b.attacks[1].code_hash
    assert a.attacks[0].code_hash == b.attacks[0].code_hash


@pytest.mark.parametrize("params, defenses, where, fragment", [
    ({"source": "at:pgd"}, None, "attacks[1].params.source", "'at:pgd' is not a defense label"),
    ({}, [{"name": "bit_depth_reduction"}], "attacks[1].params.source", "`none`"),
    ({"attack": "pgdd"}, None, "attacks[1].params.attack", "did you mean 'pgd'"),
    ({"attack": "transfer"}, None, "attacks[1].params.attack", "needs a source model"),
    ({"attack_params": {"steps": 0}}, None, "attacks[1].params.attack_params",
     "steps: Input should be greater than or equal to 1"),
    ({"attack": "fgsm", "attack_params": {"steps": 3}}, None, "attacks[1].params.attack_params",
     "steps: unknown key"),
    ({"sourse": "none"}, None, "attacks[1].params.sourse", "unknown key"),
])
def test_bad_transfer_params_are_rejected_at_load(params, defenses, where, fragment):
    with pytest.raises(UserError) as info:
        resolve_raw(suite(params, defenses), "s.yaml")
    assert info.value.where == f"s.yaml: {where}"
    assert fragment in info.value.message


def test_missing_transfer_source_exits_2_with_the_key_and_writes_nothing(tmp_path, mnist_root):
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite({"source": "at:pgd"})))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out),
                                      "--data-dir", str(mnist_root)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: ")
    assert f"{path}: attacks[1].params.source" in lines[0]
    assert not out.exists()


# -- transfer: the check --------------------------------------------------------------------------


def _rows(*specs):
    return pd.DataFrame([{"defense": "d", "attack": a, "attack_name": name, "eps": 0.3,
                          "robust_acc": acc, "clean_acc": 0.99, "n": 1000, "backend": "native",
                          "role": "eval", "attack_params": "{}"} for a, name, acc in specs])


def _status(frame, outcomes=None):
    checks = run_checks(frame, outcomes=outcomes)
    found = checks[checks["check"].str.startswith("transfer_not_stronger")]
    return found["status"].tolist(), found["detail"].tolist()


def test_transfer_stronger_than_white_box_warns_on_the_same_images():
    # unpaired: transfer 40 % vs the best white-box (PGD) 50 % -> warn
    frame = _rows(("fgsm", "fgsm", 0.6), ("pgd", "pgd", 0.5), ("transfer", "transfer", 0.4))
    status, detail = _status(frame)
    assert status == ["warn"] and "pgd 0.500" in detail[0]
    assert _status(_rows(("pgd", "pgd", 0.5), ("transfer", "transfer", 0.495)))[0] == ["pass"]
    # a transfer row is no white-box attack: no ordering check compares it with FGSM
    names = set(run_checks(_rows(("fgsm", "fgsm", 0.1), ("transfer", "transfer", 0.9)))["check"])
    assert "iterative_le_single_step" not in names

    # paired: on the 100 images PGD also evaluated, transfer is not stronger
    pgd = np.zeros(100, bool)
    pgd[:40] = True                            # 40 % on its 100 images
    transfer = np.zeros(1000, bool)
    transfer[:45] = True                       # 45 % on those 100, 4.5 % overall
    frame = _rows(("pgd", "pgd", 0.40), ("transfer", "transfer", transfer.mean()))
    frame.loc[0, "n"] = 100
    outcomes = pd.concat([
        pd.DataFrame({"defense": "d", "attack": "pgd", "eps": 0.3, "seed": 0,
                      "image": np.arange(100), "clean_correct": True, "adv_correct": pgd}),
        pd.DataFrame({"defense": "d", "attack": "transfer", "eps": 0.3, "seed": 0,
                      "image": np.arange(1000), "clean_correct": True,
                      "adv_correct": transfer})])
    status, detail = _status(frame, outcomes)
    assert status == ["pass"] and "on 100 common images" in detail[0]


# -- transfer: the runner, end to end -------------------------------------------------------------

E2E = """
name: transfer
seeds: [0, 1]
data: {dataset: mnist, eval_limit: 200, validation_size: 55000}
train: {epochs: 1}
adaptive: off               # the cells counted here are the suite's own
defenses:
  - name: bit_depth_reduction     # listed before its transfer source
    params: {bits: 1}
  - name: none
attacks:
  - name: fgsm
    eps: [0.3]
  - name: pgd
    eps: [0.3]
    params: {steps: 10, alpha: 0.05}
  - name: transfer
    eps: [0.3]
    params: {attack_params: {steps: 10, alpha: 0.05}}
"""


@pytest.mark.slow
def test_runner_hands_transfer_the_source_model_and_the_check_flags_masking(
        tmp_path, mnist_root, monkeypatch):
    """bit_depth_reduction (1 bit) masks its gradients: PGD on it fails, while PGD examples
    crafted on the undefended model transfer; the check warns for it and passes for `none`."""
    from robench.attacks.transfer import Transfer
    from robench.models import model_hash
    from robench.runner import RunOptions, run_suite

    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    sources = []
    original = Transfer.set_source

    def recording(self, model):
        sources.append((model_hash(self.model), model_hash(model)))
        original(self, model)

    monkeypatch.setattr(Transfer, "set_source", recording)
    path = tmp_path / "transfer.yaml"
    path.write_text(E2E)
    out_dir, _ = run_suite(path, RunOptions(data_dir=str(mnist_root), out=str(tmp_path / "o"),
                                            quiet=True))
    results = pd.read_csv(out_dir / "results.csv")
    hashes = results.groupby(["seed", "defense"])["model_hash"].first()
    assert hashes[(0, "none")] != hashes[(1, "none")]
    # one transfer cell per defense and seed, each crafted on that seed's `none` model
    assert sorted(sources) == sorted((hashes[(seed, d)], hashes[(seed, "none")])
                                     for seed, d in hashes.index)
    acc = results.groupby(["defense", "attack"])["robust_acc"].mean()
    assert acc[("bit_depth_reduction", "transfer")] < acc[("bit_depth_reduction", "pgd")] - 0.1
    checks = pd.read_csv(out_dir / "checks.csv")
    checks = checks[checks["check"] == "transfer_not_stronger[transfer]@0.3"]
    status = checks.groupby("defense")["status"].agg(list)     # one verdict per seed
    assert status["bit_depth_reduction"] == ["warn", "warn"]
    assert status["none"] == ["pass", "pass"]


def test_transfer_crafted_under_l2_is_an_l2_attack_and_verifiers_cannot_craft():
    from robench.traits import norm_of_params

    raw = {"name": "t", "attacks": [
        {"name": "transfer", "eps": [1.0, 2.0],
         "params": {"attack": "pgd", "attack_params": {"norm": "l2", "steps": 3, "alpha": 0.5}}},
        {"name": "fgsm", "eps": [0.1]}]}
    spec = resolve_raw(raw, "s.yaml").attacks[0]
    assert spec.label == "transfer[norm=l2]" and spec.plugin.norm_of(spec.params) == "l2"
    assert norm_of_params(spec.params_json) == "l2"  # checks and the worst case see L2
    bad = {"name": "t", "attacks": [{"name": "transfer", "eps": [0.1],
                                     "params": {"attack": "ibp"}}]}
    with pytest.raises(UserError, match="attacks\\[0\\].params.attack: 'ibp' is a verifier"):
        resolve_raw(bad, "s.yaml")


def test_transfer_crafts_the_final_iterate_unless_told_otherwise():
    """Active-set PGD stops at the first iterate that fools the source, which transfers
    poorly: transfer crafts with early_stop false by default, an explicit value is kept."""
    from robench.attacks.transfer import TransferParams

    assert TransferParams().crafting_params.early_stop is False
    assert TransferParams(attack="bim").crafting_params.early_stop is False
    told = TransferParams(attack_params={"early_stop": True})
    assert told.crafting_params.early_stop is True


@pytest.mark.slow
def test_transfer_crafts_once_for_every_target(trained_lenet, mnist, monkeypatch):
    """Two targets, one source: the second target reuses the first's examples (one crafting
    per eps and batch), and its outcomes are those of crafting afresh."""
    from robench.attacks.pgd import PGD

    calls = []
    original = PGD.perturb

    def counting(self, x, y, eps):
        calls.append(eps)
        return original(self, x, y, eps)

    monkeypatch.setattr(PGD, "perturb", counting)
    source, data = copy.deepcopy(trained_lenet), mnist.test.head(200)
    params = {"attack_params": {"steps": 3, "alpha": 0.1}}
    targets = [other_model(), copy.deepcopy(trained_lenet)]
    outcomes = []
    for target in targets:
        transfer = create_attack("transfer", target, params, seed=4)
        transfer.set_source(source)
        outcomes.append(evaluate_attack(target, transfer, [0.1, 0.3], data))
    assert sorted(calls) == [0.1, 0.3]  # crafted for the first target only
    fresh = create_attack("transfer", targets[1], params, seed=4)
    fresh.set_source(copy.deepcopy(source))  # another source object: crafted again
    again = evaluate_attack(targets[1], fresh, [0.1, 0.3], data)
    assert len(calls) == 4
    assert all(torch.equal(a.adv_ok, b.adv_ok) for a, b in zip(outcomes[1], again, strict=True))
