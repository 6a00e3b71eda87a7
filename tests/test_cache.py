"""The model cache (robench.cache): ``robench cache info/clear`` touch only entries, an entry
that does not fit leaves the model untouched, and an entry records how it was trained."""

from __future__ import annotations

from pathlib import Path


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


def test_a_cache_entry_records_how_it_was_trained_and_the_log_says_it(tmp_path):
    """Reused weights name the device and thread count that trained them (not in the key:
    another thread count differs only in float summation order, and a cluster's cache should
    serve a laptop); an entry from before this was recorded says so."""
    import json
    import platform

    import torch

    from robench.cache import ModelCache, provenance_text
    from robench.models import LeNet5

    cache = ModelCache(tmp_path)
    threads = torch.get_num_threads()
    assert cache.save("a" * 32, LeNet5(), {"seconds": 1.0}) is None
    meta = cache.load("a" * 32, LeNet5())
    assert meta is not None and meta["seconds"] == 1.0
    assert meta["trained_with"]["device"] == "cpu"
    assert meta["trained_with"]["torch_threads"] == threads
    assert provenance_text(meta) == (f"trained on cpu ({platform.machine()}), {threads} torch "
                                     f"threads, torch {torch.__version__}")
    forged = provenance_text({"trained_with": {"device": "cpu\n[none] fgsm 0.99\x1b[31m",
                                               "arch": "x" * 300}})
    assert forged.isprintable() and len(forged) < 200  # another machine's entry: shown inert
    old = {"state_dict": LeNet5().state_dict(), "meta": json.dumps({"seconds": 2.0})}
    torch.save(old, tmp_path / f"{'b' * 32}.pt")
    meta = cache.load("b" * 32, LeNet5())
    assert meta is not None and provenance_text(meta) == "trained where: not recorded"
    for odd in ("cpu", None, [1]):  # a damaged record is shown as unknown, never a crash
        assert provenance_text({"trained_with": odd}) == "trained where: not recorded"
    # a reviewer's finding: metrics that are not a list made apply_defense raise TypeError
    bad = {"state_dict": LeNet5().state_dict(), "meta": json.dumps({"seconds": 2.0,
                                                                      "metrics": None})}
    torch.save(bad, tmp_path / f"{'c' * 32}.pt")
    assert cache.load("c" * 32, LeNet5()) is None
    # hostile-user findings: rows that are not metric rows crashed every later run
    for meta in ({"seconds": 2.0, "metrics": [1, 2]}, {"seconds": 2.0, "metrics": [{}]},
                 {"seconds": float("nan")}, {"seconds": -1.0}):
        torch.save({"state_dict": LeNet5().state_dict(), "meta": json.dumps(meta)},
                   tmp_path / f"{'d' * 32}.pt")
        assert cache.load("d" * 32, LeNet5()) is None, meta
