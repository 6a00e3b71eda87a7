"""Models: the Madry MNIST CNN, the logits adapter (model.logits) and the example model plugin
of docs/adding_a_model.md, registered through the robench.models entry point."""

from __future__ import annotations

import re
from collections import namedtuple
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from robench.defenses.adversarial_training import fresh_init
from robench.errors import UserError
from robench.models import MODELS, MnistCNN, SelectOutput, check_logits, select_output
from robench.plan import resolve_raw
from robench.training import TrainConfig, accuracy, train

from .conftest import plugin_site

REPO = Path(__file__).resolve().parents[1]
Pair = namedtuple("Pair", ["aux", "out"])


# -- mnist_cnn --------------------------------------------------------------------------------
def test_mnist_cnn_has_the_reference_layers():
    """MadryLab/mnist_challenge model.py: 5x5x1x32, 5x5x32x64, 3136x1024, 1024x10, biases."""
    model = MODELS.get("mnist_cnn")()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"features.0.weight": (32, 1, 5, 5), "features.0.bias": (32,),
                      "features.3.weight": (64, 32, 5, 5), "features.3.bias": (64,),
                      "classifier.1.weight": (1024, 7 * 7 * 64), "classifier.1.bias": (1024,),
                      "classifier.3.weight": (10, 1024), "classifier.3.bias": (10,)}
    assert sum(v.numel() for v in model.parameters()) == 3_274_634
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_mnist_cnn_feeds_pixels_unnormalised():
    """Like the reference: no normalisation layer, so the first conv sees [0, 1] pixels."""
    model = MnistCNN().eval()
    x = torch.rand(2, 1, 28, 28)
    conv = model.features[0]
    seen = []
    conv.register_forward_hook(lambda m, inp, out: seen.append(inp[0]) and None)
    model(x)
    assert torch.equal(seen[0], x)


def test_mnist_cnn_fresh_init_reproduces_its_seeded_construction():
    """adversarial_training's from_scratch relies on reset_parameters = construction."""
    torch.manual_seed(5)
    built = MnistCNN()
    trained_away = MnistCNN()
    fresh = fresh_init(trained_away, 5)
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


@pytest.mark.slow
def test_mnist_cnn_learns_mnist(mnist):
    torch.manual_seed(0)
    model = MnistCNN()
    train(model, mnist.train.head(3000), TrainConfig(epochs=1, batch_size=50, lr=1e-3), seed=0)
    assert accuracy(model, mnist.test.head(500)) > 0.85


# -- the logits adapter -----------------------------------------------------------------------
class Multi(nn.Module):
    """Returns its logits inside a tuple, a dict or a named tuple."""

    def __init__(self, num_classes: int = 10, kind: str = "tuple") -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor):
        logits = self.fc(x.flatten(1))
        aux = logits.detach() * 0 + 1
        if self.kind == "tuple":
            return aux, logits
        if self.kind == "plain":
            return logits
        if self.kind == "dict":
            return {"aux": aux, "out": logits}
        return Pair(aux, logits)


@pytest.mark.parametrize(("kind", "key"), [("tuple", 1), ("tuple", -1), ("dict", "out"),
                                           ("named", "out"), ("named", 1)])
def test_select_output_returns_the_logits_and_their_gradient(kind, key):
    inner = Multi(kind=kind)
    model = SelectOutput(inner, key)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    out = model(x)
    assert torch.equal(out, inner.fc(x.flatten(1)))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the selected output is attacked


@pytest.mark.parametrize(("output", "key", "fragment"), [
    ((1, 2), 2, "index 2 is out of range: the model returns a tuple of 2 outputs"),
    ({"a": 1}, "b", "no key 'b': the model returns a dict with keys 'a'"),
    ({"a": 1}, 0, "an index (0) does not apply: the model returns a dict"),
    (torch.zeros(2, 10), "logits", "a key ('logits') does not apply: the model returns a "
     "tensor of shape (2, 10)"),
])
def test_select_output_errors_say_what_the_model_returned(output, key, fragment):
    with pytest.raises(ValueError) as caught:
        select_output(output, key)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("model", "logits", "where", "fragment"), [
    (Multi(kind="dict"), None, "model.name",
     "returns a dict with keys 'aux', 'out', not a tensor of logits; set model.logits to the "
     "key of the logits"),
    (Multi(kind="tuple"), None, "model.name", "set model.logits to the index of the logits"),
    (SelectOutput(Multi(kind="dict"), "logits"), "logits", "model.logits", "no key 'logits'"),
    (Multi(num_classes=5, kind="plain"), None, "model.name",
     "returns a tensor of shape (2, 5) (torch.float32); expected float logits of shape (2, 10)"),
    (nn.Conv2d(3, 8, 3), None, "model.name", "fails on (2, 1, 28, 28) inputs in [0, 1]"),
])
def test_check_logits_names_the_key_to_fix(synthetic, model, logits, where, fragment):
    with pytest.raises(UserError) as caught:
        check_logits(model, synthetic.test.images[:2], 10, "m", logits, "s.yaml")
    assert caught.value.where == f"s.yaml: {where}"
    assert fragment in caught.value.message


def test_logits_option_is_validated_and_joins_the_cache_key():
    raw = {"name": "s", "model": {"name": "lenet5"}, "attacks": [{"name": "fgsm", "eps": [0.1]}]}
    plain = resolve_raw(raw, "s.yaml").baseline
    keyed = resolve_raw({**raw, "model": {"name": "lenet5", "logits": 0}}, "s.yaml").baseline
    assert plain.cache_key != keyed.cache_key
    assert isinstance(keyed.build(10), SelectOutput) and not isinstance(plain.build(10),
                                                                          SelectOutput)
    for bad in (1.5, True, [0]):
        with pytest.raises(UserError) as caught:
            resolve_raw({**raw, "model": {"name": "lenet5", "logits": bad}}, "s.yaml")
        assert str(caught.value).startswith("s.yaml: model.logits: must be an "
                                            "index (an integer) or a key (a string)")


# -- the example plugin of docs/adding_a_model.md ---------------------------------------------
def doc_example() -> str:
    """The first python block of docs/adding_a_model.md: the example plugin module."""
    text = (REPO / "docs" / "adding_a_model.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


SUITE = {"name": "tiny", "seed": 0, "data": {"dataset": "mnist", "eval_limit": 200},
         "model": {"name": "tiny_net", "logits": "logits"}, "train": {"epochs": 1},
         "defenses": [{"name": "none"}],
         "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]}]}


@pytest.mark.slow
def test_doc_example_model_registers_through_its_entry_point_and_runs(tmp_path, cli_env,
                                                                     robench_subprocess):
    env = plugin_site(tmp_path, "tiny_models", doc_example(), "robench.models",
                      "tiny_net = tiny_models:TinyNet", cli_env)
    listed = robench_subprocess("list", env=env, cwd=tmp_path, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert any("tiny_net" in ln and "two-layer MLP" in ln for ln in listed.stdout.splitlines())

    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    ran = robench_subprocess("run", str(suite), "--out", str(tmp_path / "out"), "--quiet",
                             env=env, cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = pd.read_csv(tmp_path / "out" / "results.csv").sort_values("eps")
    assert list(rows["model"]) == ["tiny_net"] * 2
    clean, attacked = rows["robust_acc"].tolist()
    assert clean > 0.8                       # it trained through the adapter
    assert attacked < clean - 0.1            # and FGSM's gradient flows through it


@pytest.mark.slow
def test_doc_example_without_logits_stops_before_writing(tmp_path, cli_env, robench_subprocess):
    env = plugin_site(tmp_path, "tiny_models", doc_example(), "robench.models",
                      "tiny_net = tiny_models:TinyNet", cli_env)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "model": {"name": "tiny_net"}}))
    ran = robench_subprocess("run", str(suite), "--out", str(tmp_path / "out"), env=env,
                             cwd=tmp_path, timeout=300)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert ran.stderr.strip() == (
        f"robench: error: {suite}: model.name: model 'tiny_net' returns a dict with keys "
        "'features', 'logits', not a tensor of logits; set model.logits to the key of the logits")
    assert not (tmp_path / "out").exists()


# -- a model right for the 2-image probe, wrong for the run's batches --------------------------
QUIRKY = '''\
"""Right logits for batches of up to two images, something else for larger batches."""
import torch
from torch import nn


class QuirkyNet(nn.Module):
    """A linear classifier whose output goes wrong for batches of more than two images."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if len(x) <= 2:
            return out
        return {QUIRK}
'''
QUIRKS = {
    "too_few_classes": "out[:, :5]",
    "too_few_rows": "out[:2]",
    "an_extra_row": "torch.cat([out, out[:1]])",
    "raises": "out @ torch.zeros(3, 3)",
    "not_float": "out.argmax(1, keepdim=True).expand(-1, 10)",
}


@pytest.mark.slow
@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_a_model_wrong_only_for_real_batches_stops_before_writing(tmp_path, cli_env,
                                                                 robench_subprocess, quirk):
    """Hostile-user finding (issue 27, 9): a model whose output is right for the 2-image probe
    and wrong for larger batches gave a traceback and left the results folder behind. The
    run's own batch sizes are probed too, before anything is written."""
    env = plugin_site(tmp_path, "quirky_models", QUIRKY.replace("{QUIRK}", QUIRKS[quirk]),
                      "robench.models", "quirky_net = quirky_models:QuirkyNet", cli_env)
    suite = tmp_path / "quirky.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "model": {"name": "quirky_net"},
                                     "train": {"epochs": 0}}))
    out = tmp_path / "out"
    ran = robench_subprocess("run", str(suite), "--out", str(out), env=env, cwd=tmp_path,
                             timeout=300)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stdout + ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith(f"robench: error: {suite}: model.name: model 'quirky_net' ")
    assert "200" in lines[0]  # the batch it failed on: the evaluation split's 200 images
    assert not out.exists()
