"""Suite schema: valid suites load; each bad input is one UserError naming file and key path."""

import copy

import pytest

from robench.config import load_suite, parse_suite
from robench.errors import UserError
from robench.plan import load_plan, resolve_raw

BASE = {
    "name": "t",
    "data": {"dataset": "mnist", "eval_limit": 100},
    "model": {"name": "lenet5"},
    "train": {"epochs": 1},
    "defenses": [{"name": "none"}],
    "attacks": [
        {"name": "fgsm", "eps": [0.0, 0.1]},
        {"name": "pgd", "eps": [0.3], "params": {"steps": 5, "alpha": 0.1}},
    ],
}


def _with(path, value):
    suite = copy.deepcopy(BASE)
    node = suite
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return suite


_DELETE = object()


def test_valid_suite_loads_with_defaults():
    plan = resolve_raw(BASE, "s.yaml")
    suite = plan.suite
    assert suite.seed_list == (0,) and plan.seed == 0 and suite.device == "auto"
    assert suite.train.batch_size == 128 and suite.train.optimizer == "adam"
    assert [a.label for a in plan.attacks] == ["fgsm", "pgd"]
    assert plan.attacks[1].params.steps == 5 and plan.attacks[1].params.restarts == 1


@pytest.mark.slow
def test_shipped_suites_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml")):
        load_plan(path)


@pytest.mark.parametrize("path,value,where,fragment", [
    (("colour",), "red", "s.yaml: colour", "unknown key"),
    (("name",), _DELETE, "s.yaml: name", "required"),
    (("name",), "a/b", "s.yaml: name", "folder"),
    (("attacks",), [], "s.yaml: attacks", "at least 1"),
    (("attacks", 0, "eps"), 0.3, "s.yaml: attacks[0].eps", "valid list"),
    (("attacks", 0, "eps"), [-0.1], "s.yaml: attacks[0].eps[0]", "greater than or equal"),
    (("attacks", 0, "eps"), [1.5], "s.yaml: attacks[0].eps[0]", "less than or equal"),
    (("attacks", 0, "eps"), [], "s.yaml: attacks[0].eps", "at least 1"),
    (("attacks", 1, "params", "steps"), "forty", "s.yaml: attacks[1].params.steps", "integer"),
    (("attacks", 1, "params", "steps"), 0, "s.yaml: attacks[1].params.steps", "greater than"),
    (("attacks", 1, "params", "gamma"), 1, "s.yaml: attacks[1].params.gamma", "unknown key"),
    (("attacks", 1, "name"), "pgdd", "s.yaml: attacks[1].name", "did you mean 'pgd'"),
    (("defenses", 0, "name"), "nope", "s.yaml: defenses[0].name", "unknown defense"),
    (("data", "dataset"), "cifar", "s.yaml: data.dataset", "unknown dataset"),
    (("data", "eval_limit"), 0, "s.yaml: data.eval_limit", "greater than"),
    (("model", "name"), "resnet", "s.yaml: model.name", "unknown model"),
    (("train", "optimizer"), "rmsprop", "s.yaml: train.optimizer", "adam"),
    (("train", "lr"), "fast", "s.yaml: train.lr", "number"),
    (("device",), "tpu", "s.yaml: device", "auto"),
    (("defenses",), [{"name": "none"}, {"name": "none"}], "s.yaml: defenses[1]",
     "same plugin and settings as defenses[0]"),
    (("attacks", 0, "eps"), [0.1, 0.2, 0.1], "s.yaml: attacks[0].eps", "0.1 listed twice"),
    (("attacks", 0, "eps"), [float("nan")], "s.yaml: attacks[0].eps[0]", "nan"),
    (("seed",), -1, "s.yaml: seed", "greater than or equal to 0"),
    (("attacks", 0, "label"), "x" * 81, "s.yaml: attacks[0].label", "at most 80"),
])
def test_bad_input_names_file_and_key(path, value, where, fragment):
    with pytest.raises(UserError) as info:
        resolve_raw(_with(path, value), "s.yaml")
    assert info.value.where == where
    assert fragment in info.value.message


def test_automatic_labels_name_the_settings_that_differ():
    suite = _with(("attacks",), [{"name": "fgsm", "eps": [0.1]},
                                 {"name": "fgsm", "eps": [0.1], "params": {"backend": "art"}},
                                 {"name": "fgsm", "eps": [0.2], "label": "fgsm_big"},
                                 {"name": "pgd", "eps": [0.3], "params": {"steps": 10}},
                                 {"name": "pgd", "eps": [0.3], "params": {"steps": 10},
                                  "limit": 100}])
    labels = [a.label for a in resolve_raw(suite, "s.yaml").attacks]
    assert labels == ["fgsm", "fgsm[backend=art]", "fgsm_big", "pgd", "pgd[limit=100]"]
    defenses = _with(("defenses",), [
        {"name": "none"},
        {"name": "unlearning", "params": {"rounds": 1}},
        {"name": "unlearning", "params": {"rounds": 1, "method": "ssd"}},
        {"name": "unlearning", "params": {"rounds": 1, "method": "ssd",
                                          "method_params": {"alpha": 5.0}}},
        {"name": "unlearning", "label": "mine", "params": {"method": "scrub"}}])
    labels = [d.label for d in resolve_raw(defenses, "s.yaml").defenses]
    assert labels == ["none", "unlearning", "unlearning[method=ssd]",
                      "unlearning[method=ssd,method_params.alpha=5]", "mine"]


@pytest.mark.parametrize("entries, fragment", [
    # the same settings spelled differently (a default written out) are the same entry
    ([{"name": "pgd", "eps": [0.1]}, {"name": "pgd", "eps": [0.2], "params": {"steps": 40}}],
     "same plugin and settings as attacks[0]"),
    # an explicit label may not take an automatic one
    ([{"name": "fgsm", "eps": [0.1]}, {"name": "pgd", "eps": [0.1], "label": "fgsm"}],
     "label 'fgsm' is also the label of attacks[0]"),
])
def test_identical_entries_and_label_collisions_are_errors(entries, fragment):
    with pytest.raises(UserError) as info:
        resolve_raw(_with(("attacks",), entries), "s.yaml")
    assert info.value.where == "s.yaml: attacks[1]"
    assert fragment in info.value.message


def test_eps_is_canonical_at_load():
    plan = resolve_raw(_with(("attacks", 0, "eps"), [8 / 255, 0.1 + 0.2]), "s.yaml")
    assert plan.attacks[0].eps == (0.031372549, 0.3)


def test_duplicate_yaml_key_is_rejected_with_its_line(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("name: x\nseed: 1\nseed: 2\nattacks: [{name: fgsm, eps: [0.1]}]\n")
    with pytest.raises(UserError) as info:
        load_suite(bad)
    assert "line 3" in info.value.message and "'seed' appears twice" in info.value.message


def test_yaml_syntax_error_points_at_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nattacks: [\n  - name: fgsm\n")
    with pytest.raises(UserError) as info:
        load_suite(bad)
    assert info.value.where == str(bad)
    assert "invalid YAML at line" in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_not_a_mapping():
    with pytest.raises(UserError, match="mapping"):
        parse_suite(["a", "b"], "s.yaml")
