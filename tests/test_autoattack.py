"""AutoAttack plugin: the standard configuration as data, its strength on a trained LeNet, and the
cascade (clean-misclassified images untouched, broken images not passed on, first success kept)
checked with stub components on a toy model whose decisions are known exactly."""

import pydantic
import pytest
import torch
import torchattacks
from torch import nn

from robench.attacks import create_attack
from robench.attacks.autoattack import Component
from robench.models import LeNet5

from .conftest import accuracy_of as _acc

NAMES = ["apgd-ce", "apgd-t", "fab-t", "square"]


# -- (a) the configuration, read from the torchattacks objects that run ---------------------------

def test_standard_components_match_the_reference_standard_version():
    comps = create_attack("autoattack", LeNet5(), seed=5).components(0.3, 10)
    assert [c.name for c in comps] == NAMES
    apgd, apgdt, fab, square = (c.attack for c in comps)
    assert type(apgd) is torchattacks.APGD and type(apgdt) is torchattacks.APGDT
    assert type(fab) is torchattacks.FAB and type(square) is torchattacks.Square
    for attack in (apgd, apgdt, fab, square):
        assert (attack.norm, attack.eps, attack.seed, attack.n_restarts) == ("Linf", 0.3, 5, 1)
    assert (apgd.steps, apgd.loss) == (100, "ce")
    assert (apgdt.steps, apgdt.n_target_classes) == (100, 9)
    assert (fab.steps, fab.multi_targeted, fab.n_target_classes) == (100, True, 9)
    assert not fab.targeted  # torchattacks' single-target mode is not FAB-T
    assert (square.n_queries, square.p_init, square.loss) == (5000, 0.8, "margin")
    assert square.rescale_schedule is False  # the reference passes resc_schedule=False


def test_fast_version_is_torchattacks_default_and_differs():
    fast = create_attack("autoattack", LeNet5(), {"version": "fast"}).components(0.3, 10)
    assert [c.name for c in fast] == NAMES
    assert [c.attack.steps for c in fast[:3]] == [10, 10, 10]
    assert fast[3].attack.rescale_schedule is True
    standard = create_attack("autoattack", LeNet5()).components(0.3, 10)
    assert [c.attack.steps for c in standard[:3]] == [100, 100, 100]


@pytest.mark.parametrize("n_classes,targets", [(4, 3), (5, 4), (10, 9), (100, 9)])
def test_target_count_is_at_most_nine(n_classes, targets):
    comps = create_attack("autoattack", LeNet5()).components(0.1, n_classes)
    assert comps[1].attack.n_target_classes == targets
    assert comps[2].attack.n_target_classes == targets


def test_standard_refuses_fewer_than_four_classes():
    with pytest.raises(ValueError, match="at least 4 classes"):
        create_attack("autoattack", LeNet5()).components(0.1, 3)


@pytest.mark.parametrize("params", [{"version": "rand"}, {"version": "plus"}, {"version": 1},
                                    {"steps": 100}])
def test_bad_params_rejected(params):
    with pytest.raises(pydantic.ValidationError):
        create_attack("autoattack", LeNet5(), params)


# -- (b) strength and bounds on a trained LeNet ---------------------------------------------------

def _recording(attack, calls):
    """Wrap the attack's real components so each call records (name, number of images)."""
    real = attack.components

    def components(eps, n_classes):
        def wrap(c):
            def run(x, y):
                calls.append((c.name, x.shape[0]))
                return c.attack(x, y)
            return Component(c.name, run)
        return [wrap(c) for c in real(eps, n_classes)]

    attack.components = components


def _bounded(x_adv, x, eps):
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


@pytest.mark.slow
def test_standard_at_eps_03_breaks_everything_with_apgd_ce_alone(trained_lenet, batch):
    x, y = batch[0][:100], batch[1][:100]
    attack = create_attack("autoattack", trained_lenet, seed=0)
    calls = []
    _recording(attack, calls)
    rng = torch.get_rng_state()
    x_adv = attack(x, y, 0.3)
    assert torch.equal(torch.get_rng_state(), rng)  # components reseed; the caller's RNG kept
    _bounded(x_adv, x, 0.3)
    clean_correct = int((trained_lenet(x).argmax(1) == y).sum())
    assert calls == [("apgd-ce", clean_correct)]  # only clean-correct images; nothing survives
    assert _acc(trained_lenet, x_adv, y) == 0.0
    fast = create_attack("autoattack", trained_lenet, {"version": "fast"})(x, y, 0.3)
    pgd = create_attack("pgd", trained_lenet, {"steps": 20, "alpha": 0.02})(x, y, 0.3)
    assert _acc(trained_lenet, x_adv, y) <= min(_acc(trained_lenet, fast, y),
                                                _acc(trained_lenet, pgd, y))
    assert torch.equal(create_attack("autoattack", trained_lenet, seed=0)(x, y, 0.3), x_adv)


def _with_grad_mode(attack, enabled, seen):
    """Run the attack's real components with autograd recording on or off (``enabled``; None:
    the driver's own mode); ``seen`` gets (name, number of images, recording was on, the
    output carries a graph) per call."""
    real = attack.components

    def components(eps, n_classes):
        def wrap(c):
            def run(x, y):
                with torch.set_grad_enabled(enabled if enabled is not None
                                            else torch.is_grad_enabled()):
                    out = c.attack(x, y)
                    seen.append((c.name, x.shape[0], torch.is_grad_enabled(),
                                 out.grad_fn is not None))
                return out
            return Component(c.name, run)
        return [wrap(c) for c in real(eps, n_classes)]

    attack.components = components


@pytest.fixture(scope="module")
def standard_at_eps_02(trained_lenet, batch):
    """Standard AutoAttack at eps 0.2 on the first 100 test images, run once for the tests
    below (about 30 s): (x, y, the examples, per component (name, number of images, recording
    was on, the output carries a graph)). At eps 0.2 a few images survive APGD-CE, so every
    later component runs."""
    x, y = batch[0][:100], batch[1][:100]
    seen = []
    driver = create_attack("autoattack", trained_lenet, seed=0)
    _with_grad_mode(driver, None, seen)  # the driver's own mode
    return x, y, driver(x, y, 0.2), seen


@pytest.mark.slow
def test_standard_at_eps_02_runs_all_components_and_is_strongest(trained_lenet,
                                                                 standard_at_eps_02):
    x, y, std, calls = standard_at_eps_02
    _bounded(std, x, 0.2)
    assert [name for name, *_ in calls] == NAMES
    sizes = [n for _, n, *_ in calls]
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False)) and sizes[-1] > 0
    fast = create_attack("autoattack", trained_lenet, {"version": "fast"}, seed=0)(x, y, 0.2)
    pgd = create_attack("pgd", trained_lenet, {"steps": 20, "alpha": 0.02}, seed=0)(x, y, 0.2)
    _bounded(fast, x, 0.2)
    std_acc = _acc(trained_lenet, std, y)
    assert 0 < _acc(trained_lenet, pgd, y) < _acc(trained_lenet, x, y)  # a partial attack
    # tolerance: 2 images of 100, since fast's components draw different random starts
    assert std_acc <= _acc(trained_lenet, fast, y) + 0.02
    assert std_acc <= _acc(trained_lenet, pgd, y)
    clean_correct = int((trained_lenet(x).argmax(1) == y).sum())
    assert sizes[0] == clean_correct
    assert round(std_acc * 100) <= sizes[-1]  # a robust image went through every component


@pytest.mark.slow
def test_components_run_without_recording_a_graph_and_give_the_same_examples(trained_lenet,
                                                                             standard_at_eps_02):
    # torchattacks' APGD/APGD-T copy each step's iterate into their best-so-far tensor outside
    # an enable_grad block: with recording on, that tensor carries a graph holding every step's
    # iterate (GBs on 1000 images). The driver runs them as the reference does, in no_grad.
    x, y, x_driver, seen_driver = standard_at_eps_02
    seen_recording = []
    recording = create_attack("autoattack", trained_lenet, seed=0)
    _with_grad_mode(recording, True, seen_recording)  # the mode earlier robench ran them in
    assert [name for name, *_ in seen_driver] == NAMES
    assert not any(on or graph for *_, on, graph in seen_driver)
    assert torch.equal(recording(x, y, 0.2), x_driver)  # no_grad changes no example
    assert dict((n, g) for n, *_, g in seen_recording)["apgd-t"]  # the graph it avoids


# -- (c) the cascade, with stub components on a toy model -----------------------------------------

class ScoreModel(nn.Module):
    """Logits are the first 10 pixels of a 1x4x4 image; pixel 15 carries the image's id."""

    def forward(self, x):
        return x.flatten(1)[:, :10].clone()


EPS = 0.2


def _toy_batch(n=8, mislabelled=(5,)):
    x = torch.full((n, 1, 4, 4), 0.3)
    y = torch.arange(n) % 10
    flat = x.view(n, 16)
    flat[torch.arange(n), y] = 0.6
    flat[:, 15] = torch.arange(n) / 100
    y = y.clone()
    for i in mislabelled:
        y[i] = (y[i] + 3) % 10
    return x, y


def _ids(x):
    return sorted(round(v) for v in (x.flatten(1)[:, 15] * 100).tolist())


class Stub:
    """Records the ids it receives; 'breaks' some by moving eps from the true class score to the
    next class; ``fake`` ids get an out-of-ball move that only fools before projection."""

    def __init__(self, breaks=(), fake=()):
        self.breaks, self.fake, self.seen = set(breaks), set(fake), []

    def __call__(self, x, y):
        self.seen.append(_ids(x))
        out = x.clone().view(x.shape[0], 16)
        for row, i in enumerate(_ids_in_order(x)):
            nxt = (int(y[row]) + 1) % 10
            if i in self.breaks:
                out[row, int(y[row])] -= EPS
                out[row, nxt] += EPS
            elif i in self.fake:
                out[row, nxt] += 2.5 * EPS
            else:
                out[row, 14] += EPS / 2  # a harmless move: must not be kept
        return out.view_as(x)


def _ids_in_order(x):
    return [round(v) for v in (x.flatten(1)[:, 15] * 100).tolist()]


def _run_stubs(stubs, x, y):
    attack = create_attack("autoattack", ScoreModel())
    comps = [Component(name, stub) for name, stub in zip(NAMES, stubs, strict=True)]
    attack.components = lambda eps, n_classes: comps
    return attack(x, y, EPS)


def test_cascade_attacks_only_still_robust_images_and_keeps_first_success():
    x, y = _toy_batch()
    model = ScoreModel()
    assert _ids(x[model(x).argmax(1) != y]) == [5]  # image 5 is misclassified clean
    stubs = [Stub(breaks={1, 3}), Stub(breaks={4}), Stub(fake={7}), Stub(breaks={6})]
    x_adv = _run_stubs(stubs, x, y)
    assert [s.seen for s in stubs] == [[[0, 1, 2, 3, 4, 6, 7]], [[0, 2, 4, 6, 7]],
                                       [[0, 2, 6, 7]], [[0, 2, 6, 7]]]
    fooled = model(x_adv).argmax(1) != y
    assert fooled.tolist() == [False, True, False, True, True, True, True, False]
    for i in (0, 2, 5, 7):  # robust, misclassified clean, or only 'fooled' outside the ball
        assert torch.equal(x_adv[i], x[i])
    for i, stub in ((1, 0), (3, 0), (4, 1), (6, 3)):  # exactly the breaking stub's example
        expected = Stub(breaks={i})(x[i:i + 1], y[i:i + 1])[0]
        assert torch.equal(x_adv[i], expected), (i, stub)


def test_cascade_stops_once_every_image_is_broken():
    x, y = _toy_batch(mislabelled=())
    stubs = [Stub(breaks=range(8)), Stub(), Stub(), Stub()]
    x_adv = _run_stubs(stubs, x, y)
    assert [len(s.seen) for s in stubs] == [1, 0, 0, 0]
    assert (ScoreModel()(x_adv).argmax(1) != y).all()


def test_all_misclassified_clean_means_no_component_runs():
    x, y = _toy_batch(mislabelled=range(8))
    stubs = [Stub(breaks=range(8)) for _ in NAMES]
    x_adv = _run_stubs(stubs, x, y)
    assert all(s.seen == [] for s in stubs)
    assert torch.equal(x_adv, x)
