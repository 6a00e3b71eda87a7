"""Resolve once, end to end: code-aware reuse (an edited plugin recomputes its own model and
cells only), seeds by label (reordering a suite changes no number), canonical eps (8/255
resumes without recomputing), and one finalize path for run, leaderboard and report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robench.results import TIMING_COLUMNS

from .conftest import REPO, plugin_site

BASE = """\
name: reuse
seed: 3
data: {{dataset: mnist, eval_limit: 300}}
train: {{epochs: 1}}
defenses:
{defenses}
attacks:
{attacks}
"""
DEFENSES = ["  - name: none", "  - name: tmp_defense\n    params: {scale: 0.5}"]
ATTACKS = ["  - name: fgsm\n    eps: [0.0, 0.031372549019607843, 0.1]",
           "  - name: pgd\n    eps: [0.1]\n    params: {steps: 3, alpha: 0.05}",
           "  - name: pgd\n    eps: [0.2]\n    label: pgd_b\n    params: {steps: 3, alpha: 0.1}"]

PLUGIN = '''\
"""A throwaway defense: fine-tune nothing, scale the last layer's bias (so weights change)."""
import torch
from pydantic import Field

from robench.defenses import Defense, DefenseParams, DefenseResult


class Params(DefenseParams):
    scale: float = Field(0.5, gt=0)


class TmpDefense(Defense):
    """Scales the classifier's last bias."""

    Params = Params

    def apply(self, ctx):
        with torch.no_grad():
            ctx.model.classifier[-1].bias.mul_(self.params.scale)  # VERSION 1
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)
'''


def suite_text(defenses=DEFENSES, attacks=ATTACKS) -> str:
    return BASE.format(defenses="\n".join(defenses), attacks="\n".join(attacks))


@pytest.fixture
def plugin_env(tmp_path, cli_env) -> dict[str, str]:
    """A third-party defense on PYTHONPATH, found through its entry point."""
    return plugin_site(tmp_path, "robench_tmp_defense", PLUGIN, "robench.defenses",
                       "tmp_defense = robench_tmp_defense:TmpDefense", cli_env)


def robench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def run(suite: Path, out: Path, env: dict[str, str]) -> str:
    """Run a suite; return this run's part of run.log."""
    before = (out / "run.log").read_text() if (out / "run.log").exists() else ""
    robench("run", str(suite), "--out", str(out), "--quiet", env=env)
    return (out / "run.log").read_text()[len(before):]


def numbers(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "results.csv").drop(columns=TIMING_COLUMNS)
    return frame.sort_values(["defense", "attack", "eps"]).reset_index(drop=True)


@pytest.mark.slow
def test_editing_a_plugin_recomputes_its_model_and_cells_only(tmp_path, plugin_env):
    suite = tmp_path / "reuse.yaml"
    suite.write_text(suite_text())
    out = tmp_path / "out"
    first = run(suite, out, plugin_env)
    assert "defense tmp_defense took" in first
    stamps = pd.read_csv(out / "results.csv").set_index(["defense", "attack", "eps"])

    # a warm re-run reuses everything: the 8/255 eps reads back equal from results.csv
    again = run(suite, out, plugin_env)
    assert "[tmp_defense] defended model loaded from cache" in again
    assert again.count("already in results.csv, skipped") == 6
    assert "robust accuracy {" not in again  # no cell computed

    # editing only a comment of the plugin's file changes its code hash: the defense is
    # recomputed; its weights come out bit-identical, so its cells are still valid and kept
    plugin = tmp_path / "site" / "robench_tmp_defense.py"
    plugin.write_text(plugin.read_text().replace("# VERSION 1", "# VERSION 2"))
    comment = run(suite, out, plugin_env)
    assert "defense tmp_defense took" in comment
    assert "[tmp_defense] defended model loaded from cache" not in comment
    assert comment.count("already in results.csv, skipped") == 6

    # editing what it computes recomputes the defense and its cells, and nothing else
    plugin.write_text(plugin.read_text().replace("mul_(self.params.scale)",
                                                 "mul_(self.params.scale).add_(0.25)"))
    edited = run(suite, out, plugin_env)
    assert "defense tmp_defense took" in edited
    for attack in ("fgsm", "pgd", "pgd_b"):
        assert f"[none] {attack}: already in results.csv, skipped" in edited
        assert f"[tmp_defense] {attack} robust accuracy" in edited
    after = pd.read_csv(out / "results.csv").set_index(["defense", "attack", "eps"])
    pd.testing.assert_series_equal(after.loc["none"]["created_at"],
                                   stamps.loc["none"]["created_at"])
    assert (after.loc["tmp_defense"]["model_hash"]
            != stamps.loc["tmp_defense"]["model_hash"]).all()


@pytest.mark.slow
def test_reordering_a_suite_changes_no_number(tmp_path, plugin_env):
    forward, backward = tmp_path / "f.yaml", tmp_path / "b.yaml"
    forward.write_text(suite_text())
    backward.write_text(suite_text(DEFENSES[::-1], ATTACKS[::-1]))
    run(forward, tmp_path / "f", plugin_env)
    run(backward, tmp_path / "b", plugin_env)
    pd.testing.assert_frame_equal(numbers(tmp_path / "f"), numbers(tmp_path / "b"))


@pytest.mark.slow
def test_a_resume_keeps_the_suite_order_of_rows_and_leaderboard_columns(tmp_path, cli_env):
    # a resume re-runs stale cells after the others; results.csv and the leaderboard still
    # list them in the suite's order (pgd before fgsm here)
    suite = tmp_path / "s.yaml"
    suite.write_text(suite_text(DEFENSES[:1], [ATTACKS[1], ATTACKS[0]]))
    out = tmp_path / "o"
    run(suite, out, cli_env)
    keys = ["defense", "attack", "eps"]
    rows = pd.read_csv(out / "results.csv")[keys]
    header = (out / "leaderboard.csv").read_text().splitlines()[0]
    assert header.index("pgd@") < header.index("fgsm@")

    suite.write_text(suite.read_text().replace("steps: 3", "steps: 4"))  # pgd's cell is stale
    run(suite, out, cli_env)
    resumed = (out / "run.log").read_text().split("suite reuse:")[-1]  # a new suite: new log
    assert "[none] pgd robust accuracy" in resumed
    assert "[none] fgsm: already in results.csv, skipped" in resumed
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[keys], rows)
    assert (out / "leaderboard.csv").read_text().splitlines()[0] == header


@pytest.mark.slow
def test_run_leaderboard_and_report_share_one_finalize(tmp_path, plugin_env):
    suite = tmp_path / "s.yaml"
    suite.write_text(suite_text(DEFENSES[:1], ATTACKS[:2]))
    out = tmp_path / "o"
    run(suite, out, plugin_env)
    files = ("checks.csv", "leaderboard.csv", "leaderboard.md", "report.md")
    written = {name: (out / name).read_bytes() for name in files}
    assert "input_gradients" in written["checks.csv"].decode()  # model diagnostics included
    robench("leaderboard", str(out / "results.csv"), env=plugin_env)
    robench("report", str(out), env=plugin_env)
    for name in files:
        assert (out / name).read_bytes() == written[name], name


def test_cache_info_and_clear_touch_only_entries(tmp_path, cli_env):
    cache = Path(cli_env["ROBENCH_CACHE_DIR"])
    cache.mkdir(parents=True)
    (cache / ("a" * 32 + ".pt")).write_bytes(b"x" * 10)
    (cache / "notes.txt").write_text("mine")
    info = robench("cache", "info", env=cli_env).stdout
    assert str(cache) in info and "entries:  1" in info
    assert "removed 1 entries" in robench("cache", "clear", env=cli_env).stdout
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_seeds_derive_from_labels_not_positions():
    from robench.seeds import derive_seed

    assert derive_seed(7) == 7
    assert derive_seed(7, "attack", "pgd") == derive_seed(7, "attack", "pgd")
    assert derive_seed(7, "attack", "pgd") != derive_seed(7, "attack", "fgsm")
    assert derive_seed(7, "attack", "pgd") != derive_seed(8, "attack", "pgd")
    assert 0 <= derive_seed(2**62, "x") < 2**31


def write_package(root: Path, name: str, modules: dict[str, str]) -> Path:
    """A package ``name`` under ``root`` with an empty ``__init__`` and ``modules``' sources."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, source in modules.items():
        (pkg / f"{module}.py").write_text(source)
    return pkg


@pytest.mark.parametrize("hashing", ["robench.codehash", "robench.plan"])
def test_code_hash_follows_every_import_form(tmp_path, monkeypatch, hashing):
    """Modules used through ``import pkg.mod``, constants imported by name, and imports inside
    functions are all part of the hash: editing any of them changes it (also through the
    plan's ``code_hash``, which loads nothing from packages nothing has imported)."""
    import importlib

    from robench.codehash import modules_used

    code_hash = importlib.import_module(hashing).code_hash

    pkg = write_package(tmp_path, "hashpkg", {
        "helper": "def f(x):\n    return x + 1\n", "consts": "SCALE = 2.0\n",
        "inner": "def g(x):\n    return x * 3\n",
        "plug": "import hashpkg.helper\nfrom hashpkg.consts import SCALE\n\n\n"
                "def plugin(x):\n    from hashpkg import inner\n"
                "    return inner.g(hashpkg.helper.f(x)) * SCALE\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "hashpkg"]:
        monkeypatch.delitem(sys.modules, name)  # another parameter's package, same name
    import hashpkg.plug

    before = code_hash(hashpkg.plug.plugin)  # first: it must load the lazy ``inner`` itself
    names = {m.__name__ for m in modules_used([hashpkg.plug.plugin])}
    assert {"hashpkg.plug", "hashpkg.helper", "hashpkg.consts", "hashpkg.inner"} <= names
    for name in ("consts", "inner", "helper"):
        path = pkg / f"{name}.py"
        path.write_text(path.read_text() + "# edited\n")
        after = code_hash(hashpkg.plug.plugin)
        assert after != before, name
        before = after
    with pytest.raises(TypeError, match="needs modules, classes or functions"):
        code_hash(hashpkg.plug.plugin, "a string")


def test_plan_hashing_imports_no_new_package_and_gives_the_same_hashes() -> None:
    """Resolving a plan does not import ART (41 MB resident) to hash ``attacks/backends.py``'s
    ``from art...`` lines, and every hash of the plan (baseline, defenses, attacks) is the one
    the plain ``code_hash`` gives, which does import ART (so the check sees a difference)."""
    code = (
        "import sys, robench.plan as p, robench.codehash as c\n"
        "from robench.config import load_suite\n"
        "def hashes(name):\n"
        f"    plan = p.resolve(load_suite('{REPO}/suites/' + name), name)\n"
        "    return ([plan.baseline.code_hash, plan.baseline.cache_key]\n"
        "            + [d.code_hash + d.cache_key for d in plan.defenses]\n"
        "            + [a.code_hash for a in plan.attacks])\n"
        "names = ['fgsm_lenet.yaml', 'backends.yaml', 'unlearning_methods.yaml']\n"
        "guarded = [hashes(n) for n in names]\n"
        "assert 'art' not in sys.modules, 'the plan hashed by importing ART'\n"
        "p.code_hash = c.code_hash\n"
        "plain = [hashes(n) for n in names]\n"
        "assert 'art' in sys.modules, 'the plain hash no longer imports ART: test is void'\n"
        "assert guarded == plain\nprint(sum(map(len, plain)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    assert int(out.stdout) >= 30


def test_plan_hashing_follows_lazy_imports_and_leaves_modules_whole(tmp_path, monkeypatch):
    """A reviewer's finding against a first version that refused every new top-level import
    while hashing: a plugin module imported lazily (inside a function) that imports a
    third-party package was left out of the hash, and a module with an optional import was
    left without it. Now only codehash's own loads skip packages nothing has imported."""
    from robench import codehash, plan
    from robench.codehash import modules_used

    (write_package(tmp_path, "extdep", {}) / "__init__.py").write_text("VALUE = 1\n")
    pkg = write_package(tmp_path, "lazyhp", {
        "heavy": "import extdep\n\n\ndef f(x):\n    return x + extdep.VALUE\n",
        "soft": "try:\n    import extdep\nexcept ImportError:\n    extdep = None\n",
        "plug": "def plugin(x):\n    from lazyhp.heavy import f\n"
                "    from lazyhp import soft\n    return f(x), soft\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("lazyhp", "extdep")]:
        monkeypatch.delitem(sys.modules, name)
    import lazyhp.plug

    guarded = plan.code_hash(lazyhp.plug.plugin)
    assert sys.modules["lazyhp.soft"].extdep is not None  # its optional import worked
    assert "lazyhp.heavy" in {m.__name__ for m in modules_used([lazyhp.plug.plugin])}
    assert codehash.code_hash(lazyhp.plug.plugin) == guarded
    (pkg / "heavy.py").write_text((pkg / "heavy.py").read_text() + "# edited\n")
    assert plan.code_hash(lazyhp.plug.plugin) != guarded


def test_plan_hashing_is_reentrant_and_sees_packages_loaded_by_file(tmp_path, monkeypatch):
    """Two reviewer cases: a module loaded while hashing that hashes code itself (a plain lock
    deadlocked), and a plugin loaded from a file under a dotted name whose parent package is
    not in sys.modules (its lazy import of a sibling was left out of the hash)."""
    import importlib.util

    from robench import codehash, plan

    write_package(tmp_path, "reent", {
        "b": "x = 1\n",
        "lazy": "import robench.plan, reent.b\nH = robench.plan.code_hash(reent.b)\nthing = 1\n",
        "a": "def f():\n    from reent.lazy import thing\n    return thing\n"})
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import robench.plan, reent.a; " \
           "print(robench.plan.code_hash(reent.a.f))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert len(out.stdout.strip()) == 16

    fake = write_package(tmp_path, "fakepkg", {
        "helper": "def f():\n    return 1\n",
        "mod": "def g():\n    from fakepkg.helper import f\n    return f()\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.partition(".")[0] == "fakepkg"]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("fakepkg.mod", fake / "mod.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fakepkg.mod", module)
    spec.loader.exec_module(module)
    assert "fakepkg" not in sys.modules
    guarded = plan.code_hash(module.g)
    assert guarded == codehash.code_hash(module.g)


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


def test_a_metric_row_cannot_name_another_defense_or_seed():
    """A hostile-user finding: a (cached) metric row's own ``defense``/``seed`` keys overrode
    the recorder's, so defense_metrics.csv could credit a row to another defense."""
    from types import SimpleNamespace

    from robench.recorder import RunRecorder

    holder = SimpleNamespace(metric_rows=[], write_metrics=lambda: None)
    spec = SimpleNamespace(label="at:fgsm", name="adversarial_training")
    RunRecorder.add_metrics(holder, spec, 3, [{"defense": "none", "seed": 7, "step": 1,
                                            "metric": "loss", "value": 0.5}])
    assert holder.metric_rows == [{"method": "adversarial_training", "defense": "at:fgsm",
                                   "seed": 3, "step": 1, "metric": "loss", "value": 0.5}]
