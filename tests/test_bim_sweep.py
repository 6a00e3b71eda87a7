"""BIM's eps sweep shares its first steps (``robench.attacks.bim``): the examples must be
bit-identical to attacking each eps on its own, on real MNIST, in both memory formats; only the
number of passes may fall. A randomized model, or ``early_stop: false``, is attacked per eps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robench.attacks import create_attack
from robench.attacks.bim import shared_steps
from robench.engine import FORMATS


class CountingModel(nn.Module):
    """Counts the images passed forward (each gradient step is one forward)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x)


class BatchCoupled(nn.Module):
    """Deterministic, but each image's logits depend on the batch it is passed in (a shift by
    the batch's mean intensity): the active set's sub-batches and its whole-batch check then
    disagree on borderline images, which it resumes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("direction", torch.linspace(-1.0, 1.0, 10))
        self.whole_batch_passes = 0
        self.batch_size = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.whole_batch_passes += x.shape[0] == self.batch_size
        return self.inner(x) + 40.0 * (x.mean() - 0.13) * self.direction


class NoisyModel(nn.Module):
    """A randomized model: Gaussian input noise on every pass, from torch's global stream."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.1 * torch.randn_like(x))


def _each_and_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float],
                    params: dict | None = None) -> tuple[list, list, int, int]:
    counted = CountingModel(model)
    attack = create_attack("bim", counted, params or {})
    alone = [attack(x, y, e) for e in eps]
    each_cost, counted.images = counted.images, 0
    swept = [adv for _, adv in attack.sweep(x, y, eps)]
    return alone, swept, each_cost, counted.images


@pytest.mark.parametrize("memory_format", sorted(FORMATS))
def test_sweep_is_bit_identical_to_each_eps_alone(trained_lenet, batch, memory_format):
    model = copy.deepcopy(trained_lenet).to(memory_format=FORMATS[memory_format])
    x, y = batch[0][:500], batch[1][:500]
    eps = [0.0, 0.05, 0.1, 0.2]
    alone, swept, each_cost, sweep_cost = _each_and_sweep(model, x, y, eps)
    for e, a, s in zip(eps, alone, swept, strict=True):
        assert torch.equal(a, s), f"eps {e}: the sweep's examples differ"
    with torch.no_grad():
        fooled = [(model(a).argmax(1) != y).sum().item() for a in alone]
    # not a vacuous comparison: images fall inside the shared steps (eps 0.05, 12 steps) and
    # more fall only after them (eps 0.2), and some survive eps 0.05
    assert 0 < fooled[1] < fooled[3] < 500
    assert sweep_cost < 0.8 * each_cost


def test_sweep_in_any_eps_order_and_with_fixed_steps(trained_lenet, batch):
    x, y = batch[0][:300], batch[1][:300]
    for eps, params in (([0.3, 0.1], {}), ([0.1, 0.3], {"steps": 3}),
                        ([0.05, 0.3], {"alpha": 0.02}), ([0.2, 0.0, 0.2, 0.1], {})):
        alone, swept, _, _ = _each_and_sweep(trained_lenet, x, y, eps, params)
        assert all(torch.equal(a, s) for a, s in zip(alone, swept, strict=True)), (eps, params)


def test_randomized_model_and_plain_loop_are_attacked_per_eps(trained_lenet, batch):
    x, y = batch[0][:200], batch[1][:200]
    noisy = NoisyModel(trained_lenet)
    eps = [0.1, 0.2]
    torch.manual_seed(1)
    alone = [create_attack("bim", noisy)(x, y, e) for e in eps]
    torch.manual_seed(1)
    swept = [adv for _, adv in create_attack("bim", noisy).sweep(x, y, eps)]
    assert all(torch.equal(a, s) for a, s in zip(alone, swept, strict=True))
    plain, swept_plain, each_cost, sweep_cost = _each_and_sweep(
        trained_lenet, x, y, eps, {"early_stop": False})
    assert all(torch.equal(a, s) for a, s in zip(plain, swept_plain, strict=True))
    assert sweep_cost == each_cost


def test_shared_steps_stay_half_a_step_inside_the_smallest_eps():
    for eps, alpha in ((0.1, 1 / 255), (0.05, 0.02), (0.3, 0.01), (0.003, 1 / 255)):
        k = shared_steps(eps, alpha)
        assert k * alpha <= eps - alpha / 2 < (k + 1) * alpha
    assert shared_steps(0.001, 1 / 255) == 0


def test_sweep_resumes_as_the_active_set_does(trained_lenet, batch):
    """Sub-batches that classify differently from the whole batch: images stopped in a
    sub-batch resume after the whole-batch check, in the sweep as eps by eps."""
    x, y = batch[0][:300], batch[1][:300]
    model = BatchCoupled(trained_lenet)
    model.batch_size = len(x)
    attack = create_attack("bim", model)
    alone = []
    for eps in (0.05, 0.1):
        model.whole_batch_passes = 0
        alone.append(attack(x, y, eps))
        # two probes and one check, and more checks only if images were resumed
        assert model.whole_batch_passes > 3, "no resumption: the test proves nothing"
    swept = [adv for _, adv in attack.sweep(x, y, iter([0.05, 0.1]))]
    assert len(swept) == 2
    assert all(torch.equal(a, s) for a, s in zip(alone, swept, strict=True))


def test_a_tiny_alpha_whose_rounding_reaches_the_clip_goes_eps_by_eps(trained_lenet, batch):
    """1000 steps of 1e-5 from x: float rounding of the sums can reach eps 0.01's boundary
    within the shared steps; the sweep must notice the clip and attack eps by eps."""
    x, y = batch[0][:20], batch[1][:20]
    params = {"alpha": 1e-5, "steps": 1000}
    alone, swept, _, _ = _each_and_sweep(trained_lenet, x, y, [0.01, 0.02], params)
    assert all(torch.equal(a, s) for a, s in zip(alone, swept, strict=True))


def test_a_model_that_draws_but_votes_the_same_is_randomized(trained_lenet, batch):
    """Two equal passes are not enough: a model that draws random numbers (here noise too
    small to change a logit's sign of victory, but drawn) is attacked eps by eps, so the
    random stream after the sweep is the one eps-by-eps attacks leave."""

    class Draws(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.rand(1)
            return trained_lenet(x)

    x, y = batch[0][:100], batch[1][:100]
    torch.manual_seed(3)
    for eps in (0.1, 0.2):
        create_attack("bim", Draws())(x, y, eps)
    after_alone = torch.rand(1)
    torch.manual_seed(3)
    list(create_attack("bim", Draws()).sweep(x, y, [0.1, 0.2]))
    assert torch.equal(torch.rand(1), after_alone)
