"""The same attack through robench, torchattacks and ART on the same model and images."""

import pytest
import torch

from robench.attacks import create_attack

from .conftest import accuracy_of as _acc


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fgsm_backends(trained_lenet, batch, eps):
    x, y = batch
    native = create_attack("fgsm", trained_lenet)(x, y, eps)
    ta = create_attack("fgsm", trained_lenet, {"backend": "torchattacks"})(x, y, eps)
    art = create_attack("fgsm", trained_lenet, {"backend": "art"})(x, y, eps)
    assert torch.equal(native, ta)
    assert abs(_acc(trained_lenet, native, y) - _acc(trained_lenet, art, y)) <= 0.005
    assert (art - x).abs().max().item() <= eps + 1e-6


@pytest.mark.slow
def test_pgd_backends_agree(trained_lenet, batch):
    x, y = batch
    params = {"steps": 10, "alpha": 0.02}
    accs = {b: _acc(trained_lenet, create_attack("pgd", trained_lenet, {**params, "backend": b},
                                                 seed=0)(x, y, 0.1), y)
            for b in ("native", "torchattacks", "art")}
    assert accs["native"] < _acc(trained_lenet, x, y)
    assert abs(accs["native"] - accs["torchattacks"]) <= 0.01
    assert abs(accs["native"] - accs["art"]) <= 0.01


def test_art_is_given_true_labels(trained_lenet, batch):
    """ART without y attacks predicted labels; we always pass the true ones, so images the model
    already gets wrong are pushed with the true-label loss (identical to native FGSM maths)."""
    x, y = batch
    art = create_attack("fgsm", trained_lenet, {"backend": "art"})(x, y, 0.2)
    native = create_attack("fgsm", trained_lenet)(x, y, 0.2)
    wrong = (trained_lenet(x).argmax(1) != y)
    assert wrong.any()
    assert (art[wrong] - native[wrong]).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_autoattack_and_square_are_bounded_and_strong(trained_lenet, batch):
    x, y = batch[0][:100], batch[1][:100]
    aa = create_attack("autoattack", trained_lenet, seed=0)(x, y, 0.3)
    sq = create_attack("square", trained_lenet, {"n_queries": 200}, seed=0)(x, y, 0.3)
    for x_adv in (aa, sq):
        assert (x_adv - x).abs().max().item() <= 0.3 + 1e-6
        assert 0.0 <= x_adv.min().item() and x_adv.max().item() <= 1.0
    pgd = create_attack("pgd", trained_lenet, {"steps": 20, "alpha": 0.02})(x, y, 0.3)
    assert _acc(trained_lenet, aa, y) <= _acc(trained_lenet, pgd, y) + 0.02
