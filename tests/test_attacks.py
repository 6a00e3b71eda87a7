"""Attacks checked against torchattacks on the same model and inputs, plus their properties."""

import pytest
import torch
import torchattacks

from robench.attacks import ATTACKS, create_attack
from robench.defenses.gaussian_noise import GaussianSmoothed
from robench.errors import UserError
from robench.evaluation import evaluate_attack

from .conftest import accuracy_of as _acc


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_fgsm_matches_torchattacks(trained_lenet, batch, eps):
    x, y = batch
    ours = create_attack("fgsm", trained_lenet)(x, y, eps)
    ref = torchattacks.FGSM(trained_lenet, eps=eps)(x, y)
    assert (ours - ref).abs().max().item() <= 1e-6


@pytest.mark.slow
def test_fgsm_sweep_equals_attacking_eps_by_eps(trained_lenet, batch):
    x, y = batch
    attack = create_attack("fgsm", trained_lenet)
    eps_list = [0.0, 0.05, 0.1, 0.2, 0.3]
    for eps, x_adv in attack.sweep(x, y, eps_list):
        assert torch.equal(x_adv, attack(x, y, eps))


@pytest.mark.slow
def test_pgd_accuracy_within_1pp_of_torchattacks(trained_lenet, batch):
    x, y = batch
    params = {"steps": 20, "alpha": 0.01, "random_start": True}
    ours = create_attack("pgd", trained_lenet, params, seed=1)(x, y, 0.1)
    torch.manual_seed(1)
    ref = torchattacks.PGD(trained_lenet, eps=0.1, alpha=0.01, steps=20, random_start=True)(x, y)
    ours_acc, ref_acc = _acc(trained_lenet, ours, y), _acc(trained_lenet, ref, y)
    assert 0.05 < ref_acc < _acc(trained_lenet, x, y)  # a real, partial attack at this eps
    assert abs(ours_acc - ref_acc) <= 0.01


@pytest.mark.parametrize("name,params", [
    ("fgsm", {}), ("pgd", {"steps": 5, "alpha": 0.05}),
    pytest.param("pgd", {"steps": 3, "alpha": 0.05, "restarts": 2}, marks=pytest.mark.slow),
])
@pytest.mark.parametrize("eps", [0.0, 0.07, 0.3])
def test_perturbation_within_eps_and_range(trained_lenet, batch, name, params, eps):
    x, y = batch
    x_adv = create_attack(name, trained_lenet, params)(x[:200], y[:200], eps)
    assert (x_adv - x[:200]).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    if eps == 0:
        assert torch.equal(x_adv, x[:200])


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_eps_zero_gives_clean_accuracy(trained_lenet, mnist, name):
    data = mnist.test.head(500)
    params = {"steps": 3, "alpha": 0.05} if name == "pgd" else {}
    outcome, = evaluate_attack(trained_lenet, create_attack(name, trained_lenet, params),
                               [0.0], data)
    assert outcome.robust_acc == outcome.clean_acc
    assert outcome.attack_success_rate == 0.0


@pytest.mark.slow
def test_accuracy_falls_with_eps_and_pgd_beats_fgsm(trained_lenet, mnist):
    data = mnist.test.head(500)
    fgsm = evaluate_attack(trained_lenet, create_attack("fgsm", trained_lenet),
                           [0.0, 0.1, 0.2, 0.3], data)
    accs = [o.robust_acc for o in fgsm]
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False))
    pgd, = evaluate_attack(trained_lenet, create_attack(
        "pgd", trained_lenet, {"steps": 10, "alpha": 0.03}), [0.2], data)
    assert pgd.robust_acc <= fgsm[2].robust_acc


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in ("autoattack", "bim") else name
    for name in sorted(ATTACKS.names())])
def test_every_attack_restores_mode_and_leaks_no_gradients(trained_lenet, batch, name):
    x, y = batch
    trained_lenet.zero_grad(set_to_none=True)
    trained_lenet.train()
    try:
        params = {"steps": 2, "alpha": 0.1} if name == "pgd" else {}
        model = trained_lenet
        if name == "smoothing":  # certifies a Gaussian-noise model only
            model = GaussianSmoothed(trained_lenet, 0.25, votes=2, eval_samples=1)
            params = {"n0": 5, "n": 20}
        seen_modes = []
        hook = trained_lenet.register_forward_pre_hook(
            lambda module, inputs: seen_modes.append(module.training))
        attack = create_attack(name, model, params)
        if attack.family == "verifier":  # proves instead of attacking (crown: if installed)
            try:
                attack.check_model(trained_lenet, "lenet5", attack.params)
            except UserError:
                pytest.skip(f"{name} cannot run here (optional library missing)")
            attack.certify(x[:50], y[:50], 0.3)
        else:
            if attack.needs_source_model:  # transfer: crafts on the model it is handed
                attack.set_source(trained_lenet)
            # eps 0.3 breaks every image early: standard AutoAttack stops after APGD-CE
            attack(x[:50], y[:50], 0.3)
        hook.remove()
        assert seen_modes and not any(seen_modes)   # attacked in eval mode
        assert trained_lenet.training               # and the caller's mode restored
        assert all(p.grad is None for p in trained_lenet.parameters())
    finally:
        trained_lenet.eval()


@pytest.mark.slow
def test_pgd_restarts_never_weaker(trained_lenet, batch):
    x, y = batch
    one = create_attack("pgd", trained_lenet, {"steps": 5, "alpha": 0.03}, seed=3)(x, y, 0.15)
    more = create_attack("pgd", trained_lenet, {"steps": 5, "alpha": 0.03, "restarts": 3},
                         seed=3)(x, y, 0.15)
    assert _acc(trained_lenet, more, y) <= _acc(trained_lenet, one, y)


@pytest.mark.slow
def test_seeded_pgd_repeats(trained_lenet, batch):
    x, y = batch
    a = create_attack("pgd", trained_lenet, {"steps": 3, "alpha": 0.05}, seed=7)(x, y, 0.2)
    b = create_attack("pgd", trained_lenet, {"steps": 3, "alpha": 0.05}, seed=7)(x, y, 0.2)
    assert torch.equal(a, b)


def test_random_starts_are_per_image_whatever_the_batch_or_eps_list(trained_lenet, batch):
    """Named images get the same random start in any batch, subset or eps list, so adding an
    eps or changing a subset changes no other cell (the evaluation loop names the images)."""
    x, y = batch
    ids = list(range(100, 140))
    attack = create_attack("pgd", trained_lenet, {"steps": 3, "alpha": 0.05}, seed=5)
    attack.set_images(ids)
    both = dict(attack.sweep(x[:40], y[:40], [0.1, 0.3]))
    attack.set_images(ids)
    alone = dict(attack.sweep(x[:40], y[:40], [0.3]))
    torch.testing.assert_close(both[0.3], alone[0.3], rtol=0, atol=0)
    attack.set_images(ids[10:20])                     # a sub-batch of the same images
    part = attack(x[10:20], y[10:20], 0.3)
    torch.testing.assert_close(part, both[0.3][10:20], rtol=0, atol=0)
    other = create_attack("pgd", trained_lenet, {"steps": 3, "alpha": 0.05}, seed=6)
    other.set_images(ids)
    assert not torch.equal(other(x[:40], y[:40], 0.3), both[0.3])  # the seed matters


@pytest.mark.slow
@pytest.mark.parametrize("name,params,eps", [
    ("pgd", {"steps": 20, "alpha": 0.01}, 0.1),
    ("pgd", {"steps": 20, "alpha": 0.01}, 0.3),
    ("pgd", {"steps": 10, "alpha": 0.5, "norm": "l2"}, 2.0),
    ("pgd", {"steps": 5, "alpha": 0.03, "restarts": 3}, 0.15),
    ("bim", {}, 0.1),
])
def test_active_set_is_never_weaker_than_the_final_iterate(trained_lenet, batch, name, params,
                                                           eps):
    """early_stop (the default) against the plain loop, same seed and images: no image is robust
    only under the active set; an image it leaves robust followed the plain loop's path; an image
    misclassified before the attack is left alone; an image it fools keeps a fooling iterate."""
    x, y = batch[0][:300], batch[1][:300]
    out = {}
    for early_stop in (True, False):
        attack = create_attack(name, trained_lenet, {**params, "early_stop": early_stop}, seed=1)
        attack.set_images(list(range(300)))
        out[early_stop] = attack(x, y, eps)
    with torch.no_grad():
        clean = trained_lenet(x).argmax(1) == y
        active_ok, plain_ok = (trained_lenet(out[k]).argmax(1) == y for k in (True, False))
    robust_active, robust_plain = clean & active_ok, clean & plain_ok
    assert 0 < int(robust_active.sum()) < int(clean.sum())  # a real, partial attack
    assert not (robust_active & ~robust_plain).any()
    same = (out[True][robust_active] == out[False][robust_active]).flatten(1).all(1)
    assert same.float().mean() >= 0.95  # float rounding of another batch size may flip a sign
    assert torch.equal(out[True][~clean], x[~clean])
    assert not active_ok[clean & ~robust_active].any()


def test_active_set_stops_only_beyond_the_margin():
    from robench.attacks.active import STOP_MARGIN, fooled_by_margin

    logits = torch.tensor([[1.0, 1.0 + STOP_MARGIN / 2, 0.0], [1.0, 1.0 + 2 * STOP_MARGIN, 0.0],
                           [2.0, 1.0, 0.0]])
    assert fooled_by_margin(logits, torch.tensor([0, 0, 0])).tolist() == [False, True, False]


class _LargeLogits(torch.nn.Module):
    """2 classes, logits ~7e3 with a common mode: a batch of one rounds its margin differently
    from a batch of two (a reviewer's counterexample to a stop decided on a sub-batch)."""

    def __init__(self, w, v, b):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.stack([w, w + v]))
        self.bias = torch.nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


@pytest.mark.slow
def test_active_set_checks_its_stops_on_the_whole_batch():
    from robench.data import Split

    g = torch.Generator().manual_seed(29)
    x = torch.rand(2, 1, 28, 28, generator=g) * 0.4 + 0.3
    w = torch.randn(784, generator=g) * 300
    v = torch.randn(784, generator=g)
    v = v / v.abs().sum()
    model = _LargeLogits(w, v, torch.tensor([0.0, -(x[0].flatten() @ v).item() - 0.205])).eval()
    data = Split(x, torch.tensor([0, 1]))  # image 1 misclassified: image 0 is attacked alone
    robust = {}
    for early_stop in (True, False):
        attack = create_attack("pgd", model, {"steps": 40, "alpha": 0.01, "random_start": False,
                                              "early_stop": early_stop})
        robust[early_stop] = evaluate_attack(model, attack, [0.3], data)[0].robust
    assert not robust[False].any()
    assert torch.equal(robust[True], robust[False])


class _Noisy(torch.nn.Module):
    """A randomized defense: Gaussian noise on the input before the classifier."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("pgd", {"steps": 20, "alpha": 0.02}), ("bim", {})])
def test_active_set_runs_the_plain_loop_on_a_randomized_model(trained_lenet, mnist, name, params):
    """One noisy forward pass cannot decide that an image is fooled: a model whose forward
    passes differ gets every step on every image (the stop rule alone overstated such a model
    by 47 pp in review)."""
    noisy, data = _Noisy(trained_lenet).eval(), mnist.test.head(300)
    torch.manual_seed(0)
    robust, clean = {}, {}
    for early_stop in (True, False):
        attack = create_attack(name, noisy, {**params, "early_stop": early_stop}, seed=2)
        outcome = evaluate_attack(noisy, attack, [0.15], data)[0]
        robust[early_stop], clean[early_stop] = outcome.robust_acc, outcome.clean_acc
    assert robust[False] < clean[False] - 0.2  # a real attack on the noisy model
    assert abs(robust[True] - robust[False]) <= 0.06  # the same loop, other noise draws


def test_library_backends_record_their_final_iterate():
    from robench.attacks.pgd import PGDParams

    assert PGDParams().early_stop is True
    assert PGDParams(backend="torchattacks").early_stop is False
    with pytest.raises(ValueError, match="native backend only"):
        PGDParams(backend="art", early_stop=True)
