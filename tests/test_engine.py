"""The engine (``robench.engine``): the per-device choice, its override, that it joins every cache
key and cell code hash and run.json, and that the channels_last engine gives the same per-image
outcomes as the old contiguous one on real MNIST, within a bound stated before it was measured.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from robench.engine import ENGINE_ENV, Engine, engine_for, model_memory_format, policy_text
from robench.errors import UserError
from robench.models import LeNet5, weights_hash

SUITE = """
name: engine_tiny
seed: 0
device: cpu
data: {dataset: mnist, root: null, eval_limit: 50}
model: {name: lenet5}
train: {epochs: 0}
defenses:
  - name: none
attacks:
  - name: fgsm
    eps: [0.1]
"""


def test_cpu_default_is_channels_last_and_cuda_contiguous(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert engine_for("cpu").memory_format == "channels_last"
    assert engine_for("cuda").memory_format == "contiguous"
    model = Engine("cpu", "channels_last").prepare_model(LeNet5())
    assert model_memory_format(model) == "channels_last"
    assert model_memory_format(LeNet5()) == "contiguous"


def test_prepare_changes_layout_not_values():
    torch.manual_seed(0)
    model = LeNet5()
    before = weights_hash(model)
    Engine("cpu", "channels_last").prepare_model(model)
    assert weights_hash(model) == before


@pytest.mark.parametrize("value", ["channels_last", "contiguous"])
def test_override_applies_to_every_device(monkeypatch, value):
    monkeypatch.setenv(ENGINE_ENV, value)
    assert engine_for("cpu").memory_format == value
    assert engine_for("cuda").memory_format == value


def test_bad_override_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "nchw")
    with pytest.raises(UserError) as err:
        engine_for("cpu")
    assert ENGINE_ENV in str(err.value) and "nchw" in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_exits_2_and_writes_nothing(robench_cli, cli_env, tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    out = tmp_path / "out"
    proc = robench_cli("run", str(tmp_path / "s.yaml"), "--out", str(out), "-q",
                       env={**cli_env, ENGINE_ENV: "nchw"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ENGINE_ENV in lines[0]
    assert not out.exists()


def test_engine_joins_cache_keys_and_cell_code_hashes(monkeypatch, tmp_path):
    """A changed engine never reuses models or cells: the baseline's key (which every defense's
    key holds) and every attack's code hash change with it."""
    from robench.plan import load_plan

    (tmp_path / "s.yaml").write_text(SUITE)
    plans = {}
    for value in ("channels_last", "contiguous"):
        monkeypatch.setenv(ENGINE_ENV, value)
        plans[value] = load_plan(tmp_path / "s.yaml")
    a, b = plans["channels_last"], plans["contiguous"]
    assert a.baseline.cache_key != b.baseline.cache_key
    assert a.defenses[0].cache_key != b.defenses[0].cache_key
    assert a.attacks[0].code_hash != b.attacks[0].code_hash
    monkeypatch.delenv(ENGINE_ENV)
    assert policy_text() != "cpu:contiguous,cuda:contiguous,other:contiguous"


def test_run_json_records_the_engine(robench_cli, cli_env, tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    env = {k: v for k, v in cli_env.items() if k != ENGINE_ENV}
    proc = robench_cli("run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "-q",
                       env=env)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["engine"] == {"device_type": "cpu", "memory_format": "channels_last"}


# -- per-image agreement of the old (contiguous) and new (channels_last) engine ---------------
# The bound, stated before the comparison was first run:
# - attacks on the same weights (FGSM sweep, PGD): in every cell at most 1 of the 500 images
#   differs (<= 0.2 pp), and over all cells together >= 99.9 % of (image, cell) outcomes agree;
# - a defense trained under each engine (FGSM adversarial training, 20 steps from the trained
#   LeNet-5: the weights themselves then differ slightly): every cell's robust accuracy within
#   1 pp (5 images) and >= 98 % of per-image outcomes equal.
N_IMAGES = 500
SAME_WEIGHTS_CELL_FLIPS = 1
SAME_WEIGHTS_POOLED = 0.999
DEFENDED_CELL_PP = 1.0
DEFENDED_AGREEMENT = 0.98


def outcomes(model, attack: str, params: dict, eps: list[float], data) -> list[torch.Tensor]:
    from robench.attacks import create_attack
    from robench.evaluation import evaluate_attack

    return [o.robust for o in evaluate_attack(model, create_attack(attack, model, params, seed=1),
                                              eps, data)]


def engines(model):
    return [Engine("cpu", fmt).prepare_model(copy.deepcopy(model))  # type: ignore[arg-type]
            for fmt in ("contiguous", "channels_last")]


@pytest.mark.slow
def test_same_weights_per_image_agreement(trained_lenet, mnist):
    data = mnist.test.head(N_IMAGES)
    old, new = engines(trained_lenet)
    cells = [("fgsm", {}, [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]),
             ("pgd", {"steps": 20, "alpha": 0.02}, [0.1, 0.3])]
    agree = total = 0
    for name, params, eps in cells:
        for e, a, b in zip(eps, outcomes(old, name, params, eps, data),
                           outcomes(new, name, params, eps, data), strict=True):
            flips = int((a != b).sum())
            assert flips <= SAME_WEIGHTS_CELL_FLIPS, f"{name} eps {e}: {flips} images differ"
            agree += N_IMAGES - flips
            total += N_IMAGES
    assert agree / total >= SAME_WEIGHTS_POOLED


@pytest.mark.slow
def test_defense_trained_under_each_engine_agrees(trained_lenet, mnist):
    from robench.defenses import DEFENSES, DefenseContext
    from robench.training import TrainConfig

    data = mnist.test.head(N_IMAGES)
    cls = DEFENSES.get("adversarial_training")
    params = cls.Params(method="fgsm", eps=0.3, monitor_limit=0)
    defended = []
    for model in engines(trained_lenet):
        torch.manual_seed(0)
        ctx = DefenseContext(model=model, train=mnist.train.head(20 * 128),
                             validation=mnist.train.head(10), params=params, seed=0,
                             device=torch.device("cpu"), train_config=TrainConfig(epochs=1))
        defended.append(cls(params).apply(ctx).model.eval())
    equal = total = 0
    for e, a, b in zip([0.0, 0.1, 0.3], *(outcomes(m, "fgsm", {}, [0.0, 0.1, 0.3], data)
                                          for m in defended), strict=True):
        gap = abs(float(a.float().mean()) - float(b.float().mean())) * 100
        assert gap <= DEFENDED_CELL_PP, f"at:fgsm, fgsm eps {e}: {gap:.2f} pp apart"
        equal += int((a == b).sum())
        total += N_IMAGES
    assert equal / total >= DEFENDED_AGREEMENT


def test_verify_recomputes_with_the_engine_the_run_recorded():
    """verify re-attacks in the memory format run.json records (a run recorded before engines
    were recorded computed contiguous), whatever this machine's default or override."""
    from robench.verify_run import recorded_engine

    cpu = torch.device("cpu")
    assert recorded_engine({}, cpu).memory_format == "contiguous"
    assert recorded_engine({"engine": None}, cpu).memory_format == "contiguous"
    run = {"engine": {"device_type": "cpu", "memory_format": "channels_last"}}
    assert recorded_engine(run, cpu).memory_format == "channels_last"
    run = {"engine": {"device_type": "cpu", "memory_format": "contiguous"}}
    assert recorded_engine(run, cpu) == Engine("cpu", "contiguous")
    with pytest.raises(UserError, match="memory format"):
        recorded_engine({"engine": {"memory_format": "nhwc"}}, cpu)
