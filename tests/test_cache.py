"""The model cache (robench.cache): ``robench cache info/clear`` touch only entries, an entry
that does not fit leaves the model untouched, and an entry records how it was trained."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cache_info_and_clear_touch_only_entries(tmp_path, cli_env, robench_cli):
    cache = Path(cli_env["ROBENCH_CACHE_DIR"])
    cache.mkdir(parents=True)
    (cache / ("a" * 32 + ".pt")).write_bytes(b"x" * 10)
    (cache / "notes.txt").write_text("mine")
    info = robench_cli("cache", "info").stdout
    assert str(cache) in info and "entries:  1" in info
    assert "removed 1 entries" in robench_cli("cache", "clear").stdout
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_a_cache_entry_that_does_not_fit_leaves_the_model_untouched(tmp_path):
    """A hostile-user finding: an entry with the right meta but one mis-shaped tensor used to be
    half-copied into the model (load_state_dict copies what fits before it fails)."""
    import torch

    from robench.cache import ModelCache
    from robench.models import LeNet5

    cache = ModelCache(root=tmp_path)
    model = LeNet5()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    last = list(state)[-1]
    state[last] = torch.zeros(3)  # one entry of the wrong shape
    torch.save({"state_dict": state, "meta": '{"seconds": 1.0}'}, tmp_path / ("a" * 32 + ".pt"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert cache.load("a" * 32, model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_settings_that_cap_the_cpu_kernels_are_recorded_and_shown(tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 trains other weights (benchmarks/RESULTS.md) without changing
    torch's reported kernel level: the entry names the setting."""
    import torch

    from robench.cache import KERNEL_SETTINGS, ModelCache, cache_key, provenance_text
    from robench.models import LeNet5

    for name in KERNEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    cache = ModelCache(tmp_path)
    plain, capped = cache_key(plan="a", data="d"), cache_key(plan="b", data="d")
    assert cache.save(plain, LeNet5(), {"seconds": 1.0}) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cache.save(capped, LeNet5(), {"seconds": 1.0}) is None
    first, second = cache.load(plain, LeNet5()), cache.load(capped, LeNet5())
    assert first["trained_with"]["cpu_kernel_settings"] == {}
    assert second["trained_with"]["cpu_kernel_settings"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    level = torch.backends.cpu.get_cpu_capability()
    assert provenance_text(first).endswith(f"{level} CPU kernels")
    assert provenance_text(second).endswith(f"{level} CPU kernels (ONEDNN_MAX_CPU_ISA=AVX2)")


def test_a_cache_entry_records_how_it_was_trained_and_the_log_says_it(tmp_path):
    """Reused weights name the device and thread count that trained them (not in the key:
    another thread count differs only in float summation order, and a cluster's cache should
    serve a laptop); an entry from before this was recorded says so."""
    import json
    import platform

    import torch

    from robench.cache import ModelCache, cache_key, digest, provenance_text
    from robench.models import LeNet5

    cache, key = ModelCache(tmp_path), cache_key(plan="plan", data="data")
    threads = torch.get_num_threads()
    assert cache.save(key, LeNet5(), {"seconds": 1.0}) is None
    meta = cache.load(key, LeNet5())
    assert meta is not None and meta["seconds"] == 1.0
    assert meta["trained_with"]["device"] == "cpu"
    assert meta["trained_with"]["torch_threads"] == threads
    assert meta["trained_with"]["memory_format"] == "contiguous"
    kernels = torch.backends.cpu.get_cpu_capability()
    assert meta["trained_with"]["cpu_capability"] == kernels
    assert provenance_text(meta) == (f"trained on cpu ({platform.machine()}), {threads} torch "
                                     f"threads, torch {torch.__version__}, contiguous weights, "
                                     f"{kernels} CPU kernels")
    forged = provenance_text({"trained_with": {"device": "cpu\n[none] fgsm 0.99\x1b[31m",
                                               "arch": "x" * 300}})
    assert forged.isprintable() and len(forged) < 200  # another machine's entry: shown inert
    assert provenance_text({"seconds": 2.0}) == "trained where: not recorded"
    for odd in ("cpu", None, [1]):  # a damaged record is shown as unknown, never a crash
        assert provenance_text({"trained_with": odd}) == "trained where: not recorded"
    # metadata edited in an otherwise valid entry (its weights, key and metadata hash verify:
    # a forger's edit, read as robench reads any entry)
    good = _entry(tmp_path, key.hex)
    # a reviewer's finding: metrics that are not a list made apply_defense raise TypeError;
    # hostile-user findings: rows that are not metric rows crashed every later run
    for meta in ({"seconds": 2.0, "metrics": None}, {"seconds": 2.0, "metrics": [1, 2]},
                 {"seconds": 2.0, "metrics": [{}]}, {"seconds": float("nan")},
                 {"seconds": -1.0}):
        text = json.dumps(meta)
        torch.save({**good, "meta": text, "meta_hash": digest(text)},
                   tmp_path / f"{key.hex}.pt")
        assert cache.load(key, LeNet5()) is None, meta


# -- an entry is served only when its weights and key are the ones it recorded -------------
def _entry(root: Path, key: str) -> dict:
    import torch

    return torch.load(root / f"{key}.pt", map_location="cpu", weights_only=True)


def _swap_state_dicts(root: Path, first: str, second: str) -> None:
    """A poisoned cache: each entry keeps its metadata (and whatever else the cache wrote)
    but holds the other entry's weights, as a shared cache written by a faulty peer would."""
    import torch

    a, b = _entry(root, first), _entry(root, second)
    a["state_dict"], b["state_dict"] = b["state_dict"], a["state_dict"]
    torch.save(a, root / f"{first}.pt")
    torch.save(b, root / f"{second}.pt")


def test_swapped_weights_and_renamed_entries_are_misses(tmp_path):
    """Hostile-user finding (issue 27, 3): an entry whose state_dict was replaced by another
    model's (metadata kept) was served as if it were the right one."""
    import shutil

    import torch

    from robench.cache import ModelCache, cache_key
    from robench.models import LeNet5

    cache, why = ModelCache(tmp_path), []
    keys = [cache_key(plan=f"plan{i}", data="data") for i in range(3)]
    models = []
    for i, key in enumerate(keys[:2]):
        torch.manual_seed(i)
        models.append(LeNet5())
        assert cache.save(key, models[-1], {"seconds": 1.0}) is None
    assert cache.load(keys[0], LeNet5()) is not None  # a clean entry is served
    _swap_state_dicts(tmp_path, keys[0].hex, keys[1].hex)
    for key in keys[:2]:
        model = LeNet5()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert cache.load(key, model, on_reject=why.append) is None
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(why) == 2 and all("weights do not match" in w and "\n" not in w for w in why)
    # an entry copied under another key's file name: its recorded key names another entry
    _swap_state_dicts(tmp_path, keys[0].hex, keys[1].hex)  # back to clean
    shutil.copy(tmp_path / f"{keys[0].hex}.pt", tmp_path / f"{keys[2].hex}.pt")
    assert cache.load(keys[0].hex, LeNet5()) is not None  # a plain key string loads too
    assert cache.load(keys[2], LeNet5(), on_reject=why.append) is None
    assert "recorded for another key" in why[-1]


def test_weights_copied_with_their_hash_from_another_entry_are_a_miss(tmp_path):
    """Hostile-review finding: copying another entry's state_dict AND its recorded weights hash
    (key and metadata kept) needed no hashing, and the other model was served; the recorded
    hashes are bound to the entry's key, so a copied one does not verify."""
    import torch

    from robench.cache import WEIGHTS_FIELD, ModelCache, cache_key
    from robench.models import LeNet5

    cache, why = ModelCache(tmp_path), []
    keys = [cache_key(plan=f"plan{i}", data="data") for i in range(2)]
    for i, key in enumerate(keys):
        torch.manual_seed(i)
        assert cache.save(key, LeNet5(), {"seconds": 1.0}) is None
    target, donor = (_entry(tmp_path, key.hex) for key in keys)
    target["state_dict"], target[WEIGHTS_FIELD] = donor["state_dict"], donor[WEIGHTS_FIELD]
    torch.save(target, tmp_path / f"{keys[0].hex}.pt")
    assert cache.load(keys[0], LeNet5(), on_reject=why.append) is None
    assert len(why) == 1 and "weights do not match" in why[0]


def test_a_fifo_at_an_entry_is_a_miss_at_once(tmp_path):
    """Hostile-review finding: a FIFO planted at an entry's name blocked torch.load forever;
    the cache opens only regular files, without blocking."""
    import os

    from robench.cache import ModelCache, cache_key
    from robench.models import LeNet5

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    cache, why = ModelCache(tmp_path), []
    key = cache_key(plan="plan", data="data")
    os.mkfifo(tmp_path / f"{key.hex}.pt")
    assert cache.load(key, LeNet5(), on_reject=why.append) is None
    assert len(why) == 1 and "FIFO" in why[0] and "\n" not in why[0]


def test_entries_without_or_with_damaged_records_are_misses(tmp_path):
    """An entry from an older robench records no weights hash: recomputed once, never served
    unverified; a record of the wrong type is a miss, never a crash."""
    import torch

    from robench.cache import ModelCache, cache_key
    from robench.models import LeNet5

    cache, key, why = ModelCache(tmp_path), cache_key(plan="plan", data="data"), []
    assert cache.save(key, LeNet5(), {"seconds": 1.0}) is None
    good = _entry(tmp_path, key.hex)
    # one changed value in one tensor: the hash over every tensor changes
    nudged = {**good, "state_dict": dict(good["state_dict"])}
    nudged["state_dict"]["classifier.5.bias"] = good["state_dict"]["classifier.5.bias"] + 1e-6
    old = {k: v for k, v in good.items() if k in ("state_dict", "meta")}
    variants = {"nudged": nudged, "old": old}
    for field in set(good) - {"state_dict", "meta"}:
        for odd in (None, 7, ["x"], "0" * 16):
            variants[f"{field}={odd!r}"] = {**good, field: odd}
    for name, blob in variants.items():
        torch.save(blob, tmp_path / f"{key.hex}.pt")
        assert cache.load(key, LeNet5(), on_reject=why.append) is None, name
        assert "\n" not in why[-1], name
    assert "records no weights hash" in why[1]  # the "old" variant
    torch.save(good, tmp_path / f"{key.hex}.pt")
    assert cache.load(key, LeNet5(), on_reject=why.append) is not None
    assert cache.load(cache_key(plan="absent", data="data"), LeNet5(),
                      on_reject=why.append) is None
    assert len(why) == len(variants)  # an absent entry is a plain miss: nothing to say



def test_an_entry_whose_metadata_was_edited_is_a_miss(tmp_path):
    """Reviewer's finding: only the weights were hashed, so an entry's seconds and a defense's
    metrics (what defense_metrics.csv reports) could be edited and were still served."""
    import json

    import torch

    from robench.cache import ModelCache, cache_key
    from robench.models import LeNet5

    cache, key, why = ModelCache(tmp_path), cache_key(plan="plan", data="data"), []
    rows = [{"step": 1, "metric": "robust_acc", "value": 0.5}]
    assert cache.save(key, LeNet5(), {"seconds": 1.0, "metrics": rows}) is None
    good = _entry(tmp_path, key.hex)
    meta = json.loads(good["meta"])
    edits = {"seconds": {**meta, "seconds": 9999.0},
             "metric": {**meta, "metrics": [{**rows[0], "value": 0.99}]},
             "row_added": {**meta, "metrics": rows * 2},
             "trained_with": {**meta, "trained_with": {**meta["trained_with"], "device": "tpu"}},
             "same_json_reordered": dict(reversed(meta.items()))}
    for name, edited in edits.items():
        torch.save({**good, "meta": json.dumps(edited)}, tmp_path / f"{key.hex}.pt")
        assert cache.load(key, LeNet5(), on_reject=why.append) is None, name
        assert "metadata does not match" in why[-1], why[-1]
    torch.save(good, tmp_path / f"{key.hex}.pt")
    assert cache.load(key, LeNet5())["metrics"] == rows


SMALL_SUITE = """\
name: keyed
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
defenses: [{name: none}, {name: bit_depth_reduction, params: {bits: 3}}]
attacks: [{name: fgsm, eps: [0.1]}]
"""


def test_an_entry_records_its_keys_inputs_and_is_a_miss_when_they_do_not_hash_to_its_name(
        tmp_path):
    """Reviewer's finding: an entry recorded {"data": hash, "plan": hash}, hashes rather than
    the inputs its key is made of. It records the plan's inputs and the data's fingerprint,
    which hash to its file name; a recorded input changed (the file name kept) is a miss."""
    import json

    import torch
    import yaml

    from robench.cache import ModelCache, digest
    from robench.models import LeNet5
    from robench.plan import resolve_raw

    plan = resolve_raw(yaml.safe_load(SMALL_SUITE), str(tmp_path / "s.yaml"))
    cache, why = ModelCache(tmp_path), []
    for spec, kind in ((plan.baseline, "baseline"), (plan.defenses[1], "defense")):
        key = spec.key.with_data("f" * 16)
        assert cache.save(key, LeNet5(), {"seconds": 1.0}) is None
        entry = _entry(tmp_path, key.hex)
        inputs = json.loads(entry["key"])
        assert digest(entry["key"]) == key.hex  # its inputs hash to its file name
        assert inputs["kind"] == kind and inputs["data"] == "f" * 16
        assert {k: v for k, v in inputs.items() if k != "data"} == json.loads(spec.key.text)
        assert digest(spec.key.text) == spec.cache_key  # the plan's key: the same inputs
        if kind == "baseline":
            assert inputs["dataset"] == "mnist" and inputs["model"] == "lenet5"
            assert inputs["train"]["epochs"] == 0
        else:
            assert inputs["baseline"] == plan.baseline.cache_key
            assert json.loads(inputs["params"])["bits"] == 3
        assert cache.load(key, LeNet5()) is not None
        for field, value in (("seed", inputs["seed"] + 1), ("data", "0" * 16),
                             ("code", "edited")):
            forged = json.dumps({**inputs, field: value}, sort_keys=True,
                                separators=(",", ":"))
            torch.save({**entry, "key": forged}, tmp_path / f"{key.hex}.pt")
            assert cache.load(key, LeNet5(), on_reject=why.append) is None, field
            assert "recorded for another key" in why[-1]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_state_hash_agrees_with_weights_hash(dtype):
    # the cache hashes a state dict before copying it into a model; weights_hash hashes the
    # model after: the two must agree (buffers included: LeNet5's Normalize mean and std)
    import torch

    from robench.cache import state_hash
    from robench.models import LeNet5, MnistCNN, weights_hash

    for cls in (LeNet5, MnistCNN):
        torch.manual_seed(0)
        model = cls().to(getattr(torch, dtype))
        assert state_hash(model.state_dict()) == weights_hash(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state[next(iter(state))].view(-1)[0] += 1
        assert state_hash(state) != weights_hash(model)


CACHED_SUITE = """\
name: cached
seed: {seed}
data: {{dataset: mnist, eval_limit: 100}}
train: {{epochs: 0}}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
  - name: pgd
    eps: [0.1]
    params: {{steps: 2, alpha: 0.05}}
"""


@pytest.mark.slow
def test_a_poisoned_cache_entry_is_recomputed_not_served(tmp_path, cli_env, robench_cli,
                                                         mnist):
    """Hostile-user finding (issue 27, 3): the baseline entry's state_dict replaced by another
    model's made `none` report another model's numbers, and a resume overwrote the correct
    rows with them. Now the entry is a miss: the resume keeps every row, a fresh run equals
    the clean one, and the log says why the entry was not used."""
    from robench.plan import load_plan

    from .conftest import numbers, run_logged

    cache = Path(cli_env["ROBENCH_CACHE_DIR"])
    suites, keys, clean = [], [], []
    for seed in (0, 1):
        suite = tmp_path / f"seed{seed}.yaml"
        suite.write_text(CACHED_SUITE.format(seed=seed))
        suites.append(suite)
        keys.append(load_plan(suite).baseline.key.with_data(mnist.fingerprint).hex)
        run_logged(robench_cli, suite, tmp_path / f"clean{seed}")
        clean.append(numbers(tmp_path / f"clean{seed}"))
    assert sorted(p.stem for p in cache.glob("*.pt")) == sorted(keys)
    assert not clean[0].equals(clean[1])  # two different models
    _swap_state_dicts(cache, keys[0], keys[1])

    before = (tmp_path / "clean0" / "results.csv").read_text()
    # a resume in the complete folder (--update: a plain run would only check it, reading)
    log = run_logged(robench_cli, suites[0], tmp_path / "clean0", None, "--update")
    assert "loaded from cache" not in log and "weights do not match" in log
    assert (tmp_path / "clean0" / "results.csv").read_text() == before
    log = run_logged(robench_cli, suites[1], tmp_path / "fresh1")
    assert "loaded from cache" not in log and "weights do not match" in log
    assert numbers(tmp_path / "fresh1").equals(clean[1])
    # the recomputed entries were stored again, verified: served from now on
    log = run_logged(robench_cli, suites[0], tmp_path / "fresh0")
    assert "loaded from cache" in log and numbers(tmp_path / "fresh0").equals(clean[0])
