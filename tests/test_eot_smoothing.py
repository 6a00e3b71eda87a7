"""EOT (averaged input gradients), the ``gaussian_noise`` defense, the ``smoothing`` verifier's
CERTIFY, majority-vote evaluation and the determinism check (issue 30, items 2, 3, 5)."""

import json

import pytest
import torch
import yaml
from scipy.stats import beta, norm
from torch import nn
from torch.nn import functional as F

from robench.attacks import ATTACKS, create_attack
from robench.attacks.smoothing import Smoothing, SmoothingParams
from robench.checks import run_checks
from robench.defenses.gaussian_noise import GaussianSmoothed
from robench.diagnostics import model_diagnostics
from robench.evaluation import voted_predict
from robench.models import LeNet5
from robench.plan import resolve_raw

from .conftest import result_row


class TwoMaps(nn.Module):
    """Picks one of two linear maps at random on every forward pass and records which."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, 3, 4, generator=g), requires_grad=False)
        self.rng = torch.Generator().manual_seed(1)
        self.picked: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = int(torch.randint(2, (1,), generator=self.rng))
        self.picked.append(i)
        return x.flatten(1) @ self.w[i].T


def ce_gradient(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """By hand: d/dx sum_i CE(W x_i, y_i) = (softmax(W x) - onehot(y)) W."""
    p = F.softmax(x @ w.T, dim=1) - F.one_hot(y, w.shape[0]).float()
    return p @ w


def test_eot_averages_k_gradients():
    model, x, y = TwoMaps(), torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    attack = create_attack("pgd", model, {"eot_samples": 7, "steps": 1})
    grad = attack.input_gradient(x, y)
    assert len(model.picked) == 7 and set(model.picked) == {0, 1}
    expected = sum(ce_gradient(model.w[i], x, y) for i in model.picked) / 7
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    # k = 1: one pass, the gradient of the map it picked
    one = create_attack("fgsm", model).input_gradient(x, y)
    torch.testing.assert_close(one, ce_gradient(model.w[model.picked[-1]], x, y))


def test_eot_one_is_identical_to_the_plain_gradient():
    torch.manual_seed(0)
    model, x, y = LeNet5().eval(), torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    xr = x.clone().requires_grad_(True)
    (old,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    for name, params in [("fgsm", {}), ("pgd", {"steps": 3}), ("bim", {"steps": 3}),
                         ("rfgsm", {})]:
        plain = create_attack(name, model, params, seed=3)
        eot1 = create_attack(name, model, {**params, "eot_samples": 1}, seed=3)
        assert torch.equal(plain.input_gradient(x, y), old)
        assert torch.equal(plain(x, y, 0.3), eot1(x, y, 0.3))
        # the canonical params (hence labels, resume keys) are unchanged at k = 1
        assert "eot_samples" not in eot1.params.model_dump(mode="json")


def test_eot_label_and_bad_values():
    raw = {"name": "s", "data": {"dataset": "mnist"}, "train": {"epochs": 0},
           "defenses": [{"name": "none"}],
           "attacks": [{"name": "pgd", "eps": [0.1], "params": {"eot_samples": 4}}]}
    plan = resolve_raw(raw, "s.yaml")
    assert plan.attacks[0].label == "pgd[eot_samples=4]"
    for bad in (0, 2.0, "2", True):
        with pytest.raises(ValueError, match="eot_samples"):
            ATTACKS.get("pgd").Params(eot_samples=bad)
    with pytest.raises(ValueError, match="eot_samples"):
        ATTACKS.get("fgsm").Params(eot_samples=2, backend="torchattacks")
    with pytest.raises(ValueError, match="eot_samples"):
        ATTACKS.get("autoattack").Params(eot_samples=2, version="fast")


class Scripted(nn.Module):
    """A base classifier whose predictions are a fixed script, consumed in order."""

    def __init__(self, script: list[int], classes: int = 10) -> None:
        super().__init__()
        self.script, self.classes, self.at = script, classes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.tensor(self.script[self.at:self.at + x.shape[0]])
        self.at += x.shape[0]
        return F.one_hot(labels, self.classes).float()


def test_certify_reproduces_a_hand_computed_clopper_pearson_radius():
    n0, n, n_a, alpha, sigma = 10, 1000, 990, 0.001, 0.5
    # one probe pass (the class count), selection: 3; then 990 of 1000 votes for 3
    script = [0] + [3] * n0 + [3] * n_a + [7] * (n - n_a)
    model = GaussianSmoothed(Scripted(script), sigma, votes=1, eval_samples=1)
    verifier = Smoothing(model, SmoothingParams(n0=n0, n=n, alpha=alpha, batch_size=64))
    x = torch.zeros(1, 1, 4, 4)
    labels, radii = verifier.radii(x)
    p_lower = beta.ppf(alpha, n_a, n - n_a + 1)       # one-sided Clopper-Pearson, by hand
    assert labels.tolist() == [3]
    assert radii.item() == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-12)
    r = radii.item()
    verifier.radii = lambda _: (labels, radii)   # every eps reads the same certificate
    assert verifier.certify(x, torch.tensor([3]), r - 1e-6).item()
    assert not verifier.certify(x, torch.tensor([3]), r).item()   # strict: a tie is no proof
    assert not verifier.certify(x, torch.tensor([7]), 0.0).item()
    # pA_lower < 0.5: abstain, never certified
    abstains = GaussianSmoothed(Scripted([0] + [1] * n0 + [1] * 500 + [2] * 500), sigma, 1, 1)
    labels, radii = Smoothing(abstains, SmoothingParams(n0=n0, n=n)).radii(x)
    assert labels.tolist() == [-1] and radii.tolist() == [0.0]


def test_majority_vote_evaluation():
    class Flaky(nn.Module):
        eval_samples = 5

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1     # image 0: class 1 on 3 of 5 passes; image 1: class 2 on 2
            a = 1 if self.calls <= 3 else 0
            b = 2 if self.calls <= 2 else 4
            return F.one_hot(torch.tensor([a, b]), 5).float()

    assert voted_predict(Flaky(), torch.zeros(2, 3)).tolist() == [1, 4]


def test_deterministic_output_fails_without_eot():
    x = torch.rand(20, 1, 28, 28)
    y = torch.zeros(20, dtype=torch.long)
    from robench.data import Split
    data = Split(x, y, torch.arange(20))
    torch.manual_seed(0)
    # a base whose noisy votes vary (an untrained LeNet votes one class whatever the noise)
    noisy = model_diagnostics(GaussianSmoothed(Linear(torch.randn(10, 784)), 0.5, 2, 1), data)
    steady = model_diagnostics(LeNet5(), data)
    assert noisy["random_output"] == 1.0 and steady["random_output"] == 0.0

    def frame(params):
        row = result_row("d", "pgd", 0.1, 0.9, 0.5)
        return result_row_frame([{**row, "attack_params": json.dumps(params)}])

    def status(diag, params):
        checks = run_checks(frame(params), {"d": diag}).set_index("check")["status"]
        return checks.get("deterministic_output", "pass")

    assert status(noisy, {"steps": 2}) == "fail"
    assert status(noisy, {"steps": 2, "eot_samples": 8}) == "pass"
    assert status(steady, {"steps": 2}) == "pass"


def result_row_frame(rows):
    import pandas as pd
    return pd.DataFrame(rows)


def suite(defenses, attacks):
    return {"name": "s", "data": {"dataset": "mnist", "eval_limit": 20},
            "train": {"epochs": 0}, "defenses": defenses, "attacks": attacks}


SMOOTH = {"name": "smoothing", "eps": [0.5], "params": {"n0": 10, "n": 100}}
NOISE = {"name": "gaussian_noise", "params": {"sigma": 0.25}}


@pytest.mark.parametrize("raw, fragments", [
    (suite([{"name": "none"}], [SMOOTH]), ["attacks[0]", "declares no Gaussian noise"]),
    (suite([NOISE], [{**SMOOTH, "params": {"norm": "linf"}}]), ["attacks[0].params", "l2"]),
    (suite([NOISE], [{**SMOOTH, "params": {"n0": 100, "n": 100}}]),
     ["attacks[0].params", "n0"]),
    (suite([NOISE], [{**SMOOTH, "params": {"alpha": 1.0}}]), ["attacks[0].params.alpha"]),
    (suite([NOISE], [{**SMOOTH, "params": {"alpha": 0}}]), ["attacks[0].params.alpha"]),
    (suite([{"name": "gaussian_noise", "params": {"sigma": 0}}], [SMOOTH]),
     ["defenses[0].params.sigma"]),
    (suite([NOISE], [{"name": "pgd", "eps": [0.5], "params": {"eot_samples": 0}}]),
     ["attacks[0].params.eot_samples"]),
    (suite([NOISE], [{"name": "fgsm", "eps": [0.5], "params": {"eot_samples": 1.5}}]),
     ["attacks[0].params.eot_samples"]),
], ids=["no_noise", "linf", "n0_ge_n", "alpha_1", "alpha_0", "sigma_0", "eot_0", "eot_float"])
def test_bad_smoothing_and_eot_input(tmp_path, robench_cli, raw, fragments):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    result = robench_cli("run", str(path), "--out", str(out), "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("restricted", [True, False])
def test_smoothing_restricted_to_noise_defenses_sits_beside_other_defenses(
        tmp_path, robench_cli, restricted, cli_env):
    """``defenses:`` on the smoothing entry limits the Gaussian-noise check to the defenses it
    runs on; unrestricted, the undefended model is still refused in one line."""
    entry = {**SMOOTH, "defenses": ["gaussian_noise"]} if restricted else SMOOTH
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite([{"name": "none"}, NOISE], [
        entry, {"name": "fgsm", "eps": [0.1]}])))
    out = tmp_path / "out"
    # a wide console, so no table cell wraps the phrase (output is not a terminal here)
    result = robench_cli("plan", str(path), "--out", str(out), env={**cli_env, "COLUMNS": "250"})
    assert "Traceback" not in result.stderr
    if restricted:
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())
        assert "smoothing[" in text and "forward passes per image" in text
    else:
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "attacks[0]" in lines[0] and "defense 'none' declares no Gaussian noise" \
            in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_tiny_smoothing_suite_end_to_end(tmp_path, robench_cli, synthetic):
    raw = {"name": "tiny_smoothing", "data": {"dataset": "synthetic", "eval_limit": 30,
                                              "validation_size": 50},
           "train": {"epochs": 3}, "adaptive_eot_samples": 4,
           "defenses": [{"name": "gaussian_noise", "params": {"sigma": 0.5, "votes": 8}}],
           "attacks": [
               {"name": "smoothing", "eps": [0.25, 0.5], "params": {"n0": 20, "n": 200}},
               {"name": "pgd", "eps": [0.25, 0.5],
                "params": {"norm": "l2", "steps": 10, "alpha": 0.1, "eot_samples": 4}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    result = robench_cli("run", str(path), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    import pandas as pd
    checks = pd.read_csv(out / "checks.csv").set_index("check")["status"]
    bounds = checks[checks.index.str.startswith("bounds_hold")]
    assert len(bounds) and set(bounds) == {"pass"}, checks
    assert checks.get("deterministic_output", "pass") == "pass"
    rows = pd.read_csv(out / "results.csv")
    labels = set(rows["attack"])
    assert any(a.startswith("smoothing[") and "n=200" in a for a in labels), labels
    assert any("eot_samples=4" in a for a in labels), labels
    # adaptive: auto attacks the vote through its soft classifier (BPDA with EOT)
    assert any(a.startswith("bpda[of=pgd[") and a.endswith("eot=4]") for a in labels), labels


def test_gaussian_noise_model_stores_only_the_base_weights():
    from robench.defenses.gaussian_noise import GaussianNoise, GaussianNoiseParams
    from robench.models import model_hash, weights_hash

    torch.manual_seed(0)
    trained, params = LeNet5(), GaussianNoiseParams(sigma=0.5)
    wrapped = GaussianNoise.wrap(trained, params)
    assert wrapped.state_dict().keys() == trained.state_dict().keys()
    # loaded from the cache or a shipped file: a fresh baseline copy, wrapped, then loaded
    torch.manual_seed(1)
    loaded = GaussianNoise.wrap(LeNet5(), params)
    loaded.load_state_dict(wrapped.state_dict())
    assert weights_hash(loaded) == weights_hash(trained)
    assert model_hash(loaded) == model_hash(wrapped) != model_hash(trained)
    assert GaussianNoise.randomized and GaussianNoise.noise_sigma(params) == 0.5


# -- the soft smoothed classifier (surrogate), the probabilistic verifier's checks -------------
class Linear(nn.Module):
    """A base classifier with a known softmax: logits W x (x flattened)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def test_the_surrogate_gradient_is_the_soft_classifiers_and_the_vote_has_none():
    g = torch.Generator().manual_seed(0)
    w = 3 * torch.randn(4, 6, generator=g)
    x, y = torch.rand(3, 1, 2, 3, generator=g), torch.tensor([0, 1, 2])
    votes, sigma = 5, 0.3
    model = GaussianSmoothed(Linear(w), sigma, votes, eval_samples=1)
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(7)
    out = model.surrogate()(xr)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xr)
    # by hand, with the same noise draws: CE = -log s_y, s = mean_k softmax(W z_k), so
    # dCE/dx = -(1/s_y) mean_k p_ky (W_y - sum_j p_kj W_j)
    torch.manual_seed(7)
    z = x.repeat_interleave(votes, 0)
    z = (z + torch.randn_like(z) * sigma).flatten(1)
    p = F.softmax(z @ w.T, dim=1).view(3, votes, 4)
    s = p.mean(1)
    expected = torch.stack([
        -(p[i, :, y[i], None] * (w[y[i]] - p[i] @ w)).mean(0) / s[i, y[i]] for i in range(3)])
    torch.testing.assert_close(grad.flatten(1), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out, s.log(), rtol=1e-6, atol=1e-7)
    assert (grad.flatten(1).norm(dim=1) > 1e-3).all()     # not the vanishing 1e-12 of before
    # the forward pass: the vote's log shares (value), an exactly zero input gradient
    torch.manual_seed(7)
    hard = model(xr)
    votes_of = F.one_hot((z @ w.T).argmax(1), 4).float().view(3, votes, 4).mean(1)
    assert torch.equal(hard, votes_of.clamp_min(1e-12).log())
    (zero,) = torch.autograd.grad(F.cross_entropy(hard, y, reduction="sum"), xr)
    assert torch.equal(zero, torch.zeros_like(zero))
    from robench.defenses.gaussian_noise import GaussianNoise
    assert GaussianNoise.has_surrogate


def test_bpda_follows_the_soft_classifier_and_auto_adds_it():
    from robench.attacks.bpda import surrogate_of
    from robench.defenses.gaussian_noise import SoftSmoothed

    model = GaussianSmoothed(LeNet5(), 0.25, 4, 1)
    assert isinstance(surrogate_of(model), SoftSmoothed)
    l2 = {"norm": "l2", "alpha": 0.1}
    for attack in ({"name": "pgd", "eps": [0.5], "params": l2},
                   {"name": "pgd", "eps": [0.5], "params": {**l2, "eot_samples": 8}}):
        raw = {**suite([NOISE], [attack]), "adaptive_eot_samples": 4}
        plan = resolve_raw(raw, "s.yaml")
        (bpda,) = [a for a in plan.attacks if a.name == "bpda"]
        # an EOT pgd is no adaptive attack on a vote: it too gets BPDA, with its larger k
        k = max(4, attack["params"].get("eot_samples", 1))
        assert bpda.label.startswith("bpda[of=pgd") and bpda.label.endswith(f"eot={k}]")
        assert json.loads(bpda.params_json)["eot_samples"] == k


def _frame(rows):
    import pandas as pd
    return pd.DataFrame(rows)


def test_eps0_check_skips_a_probabilistic_verifier_only():
    def status(name):
        frame = _frame([result_row("d", f"{name}[n=100]", 0.0, 0.9, 0.8, role="bound",
                                   attack_name=name)])
        checks = run_checks(frame).set_index("check")["status"]
        return checks.get("eps0_equals_clean", "absent")

    assert Smoothing.probabilistic and not ATTACKS.get("ibp").probabilistic
    assert status("smoothing") == "absent"   # abstentions: below clean accuracy by definition
    assert status("ibp") == "fail"           # certifies exactly the correct images at eps 0


def test_a_broken_smoothing_certificate_is_a_warning_with_its_count():
    import pandas as pd

    def checks(name):
        label = f"{name}[n=100]"
        frame = _frame([result_row("d", "pgd", 0.5, 1.0, 0.5, n=4),
                        result_row("d", label, 0.5, 1.0, 0.5, n=4, role="bound",
                                   attack_name=name)])
        outcomes = pd.DataFrame([{"defense": "d", "attack": a, "eps": 0.5, "seed": 0,
                                  "image": i, "clean_correct": True, "adv_correct": ok}
                                 for a, flags in (("pgd", [True, False, True, False]),
                                                  (label, [True, True, False, False]))
                                 for i, ok in enumerate(flags)])
        return run_checks(frame, None, outcomes).set_index("check").loc[f"bounds_hold[{label}]"]

    soft = checks("smoothing")
    assert soft["status"] == "warn", soft
    assert "breaks 1 of the 2 images" in soft["detail"] and "1 - alpha" in soft["detail"]
    assert checks("ibp")["status"] == "fail"


def test_a_certificate_repeats_whatever_the_batch():
    torch.manual_seed(0)
    model = GaussianSmoothed(LeNet5().eval(), 0.5, 1, 1)
    x = torch.rand(3, 1, 28, 28)
    params = SmoothingParams(n0=5, n=60, batch_size=16)

    def radii(images, ids):
        verifier = Smoothing(model, params, seed=3)
        verifier.set_images(ids)
        return verifier.radii(images)[1]

    together = radii(x, [10, 11, 12])
    assert torch.equal(radii(x[2:], [12]), together[2:])
    assert torch.equal(radii(x.flip(0), [12, 11, 10]), together.flip(0))


def test_plan_says_why_auto_adds_nothing_to_a_randomized_defense(tmp_path, robench_cli):
    """A randomized defense with no plain gradient attack on it: ``adaptive: auto`` adds
    nothing, and the plan says that is why, not that no defense declares randomness."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite([NOISE], [SMOOTH])))
    result = robench_cli("plan", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "adaptive: auto (nothing to add: no plain gradient attack runs on its surrogate " \
           "or randomized defenses)" in text
    assert "no defense declares" not in text
