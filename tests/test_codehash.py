"""Code-aware hashing (robench.codehash, and the plan's guarded code_hash): every import form
is part of a plugin's hash, resolving a plan imports no new package, and editing a plugin
recomputes its own model and cells only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, reuse_suite, run_logged


@pytest.mark.slow
def test_editing_a_plugin_recomputes_its_model_and_cells_only(tmp_path, plugin_env,
                                                              robench_subprocess):
    suite = tmp_path / "reuse.yaml"
    # an untrained baseline (epochs 0): the code hash, not the training, decides what reruns
    suite.write_text(reuse_suite().replace("epochs: 1", "epochs: 0"))
    out = tmp_path / "out"
    first = run_logged(robench_subprocess, suite, out, plugin_env)
    assert "defense tmp_defense took" in first
    stamps = pd.read_csv(out / "results.csv").set_index(["defense", "attack", "eps"])

    # a warm re-run finds the complete run (the 8/255 eps reads back equal from results.csv)
    # and only verifies it: nothing computed, nothing written (robench.fresh_clone)
    log = (out / "run.log").read_bytes()
    again = robench_subprocess("run", str(suite), "--out", str(out), "--quiet", env=plugin_env)
    assert again.returncode == 0, again.stderr
    assert "holds a complete run of this suite: verified: " in again.stdout, again.stdout
    assert (out / "run.log").read_bytes() == log

    # editing only a comment of the plugin's file changes its code hash: a plain re-run says
    # that the defense's cells were computed by other code (stale) and writes nothing...
    plugin = tmp_path / "site" / "robench_tmp_defense.py"
    plugin.write_text(plugin.read_text().replace("# VERSION 1", "# VERSION 2"))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    plain = robench_subprocess("run", str(suite), "--out", str(out), "--quiet", env=plugin_env)
    assert plain.returncode == 0, plain.stderr
    line, = plain.stdout.strip().splitlines()
    assert "holds a complete run of this suite: verified: " in line, line
    stale = len(stamps.loc["tmp_defense"])
    assert f"{stale} of its {len(stamps)} cells were computed by other code than this " \
           "checkout's (tmp_defense), so they are stale" in line, line
    assert "--recompute" in line and "--update" in line, line
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # ... and --update (the developer's workflow) recomputes the defense in the folder; its
    # weights come out bit-identical, so its cells are still valid and kept
    comment = run_logged(robench_subprocess, suite, out, plugin_env, "--update")
    assert "defense tmp_defense took" in comment
    assert "[tmp_defense] defended model loaded from cache" not in comment
    assert comment.count("already in results.csv, skipped") == 6

    # editing what it computes recomputes the defense and its cells, and nothing else
    plugin.write_text(plugin.read_text().replace("mul_(self.params.scale)",
                                                 "mul_(self.params.scale).add_(0.25)"))
    edited = run_logged(robench_subprocess, suite, out, plugin_env, "--update")
    assert "defense tmp_defense took" in edited
    for attack in ("fgsm", "pgd", "pgd_b"):
        assert f"[none] {attack}: already in results.csv, skipped" in edited
        assert f"[tmp_defense] {attack} robust accuracy" in edited
    after = pd.read_csv(out / "results.csv").set_index(["defense", "attack", "eps"])
    pd.testing.assert_series_equal(after.loc["none"]["created_at"],
                                   stamps.loc["none"]["created_at"])
    assert (after.loc["tmp_defense"]["model_hash"]
            != stamps.loc["tmp_defense"]["model_hash"]).all()


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


@pytest.mark.slow
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


@pytest.mark.slow
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
