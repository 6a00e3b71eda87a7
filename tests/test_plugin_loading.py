"""Third-party plugins that misbehave while they are imported: any exception but Ctrl-C (a
``BaseException`` subclass, ``GeneratorExit``, ``SystemExit``) sets the plugin aside as UNUSABLE
and every suite that does not name it runs; a plugin that changes the working folder moves
neither ``--out`` nor anything else robench resolves against the folder it started in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from robench.registry import Registry

from .conftest import plugin_site

SUITE = """\
name: plug
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
attacks: [{name: fgsm, eps: [0.1]}]
"""


class Boom(BaseException):
    """Neither an Exception nor SystemExit: what a careless plugin may raise at import."""


class EntryPoint:
    def __init__(self, name, load):
        self.name, self.value, self._load = name, f"pkg.mod:{name}", load

    def load(self):
        return self._load()


def registry_of(monkeypatch, eps) -> Registry:
    import robench.registry as registry_module

    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: eps if group == "robench.test_loading" else [])
    return Registry("thing", entry_point_group="robench.test_loading", base=int)


def raising(error: BaseException):
    def load():
        raise error
    return load


@pytest.mark.parametrize("error", [Boom("at import"), GeneratorExit(), SystemExit(3)],
                         ids=["base_exception", "generator_exit", "system_exit"])
def test_any_exception_at_import_marks_the_plugin_unusable(monkeypatch, error):
    reg = registry_of(monkeypatch, [EntryPoint("bad", raising(error)),
                                    EntryPoint("good", lambda: int)])
    assert reg.names() == ["good"]
    assert f"failed to load ({type(error).__name__}" in reg.broken["bad"]


def test_ctrl_c_while_a_plugin_is_imported_still_stops_robench(monkeypatch):
    reg = registry_of(monkeypatch, [EntryPoint("slow", raising(KeyboardInterrupt()))])
    with pytest.raises(KeyboardInterrupt):
        reg.names()


def test_a_plugin_changing_the_working_folder_at_import_is_undone(monkeypatch, tmp_path):
    start, elsewhere = Path.cwd(), tmp_path
    monkeypatch.chdir(start)  # put back after the test whatever happens

    def chdir_and_fail():
        os.chdir(elsewhere)
        raise ImportError("after chdir")

    def chdir():
        os.chdir(elsewhere)
        return int

    reg = registry_of(monkeypatch, [EntryPoint("a", chdir), EntryPoint("b", chdir_and_fail)])
    assert reg.names() == ["a"]
    assert Path.cwd() == start


@pytest.mark.slow
def test_a_plugin_raising_a_base_exception_breaks_only_the_suites_naming_it(
        tmp_path, cli_env, robench_subprocess):
    env = plugin_site(tmp_path, "robench_boom_plugin",
                      "class Boom(BaseException):\n    pass\n\nraise Boom('at import')\n",
                      "robench.attacks", "boom = robench_boom_plugin:Boom", cli_env)
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    proc = robench_subprocess("run", str(suite), "--out", str(tmp_path / "ok"), "--quiet",
                              env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ok" / "results.csv").exists()
    listed = robench_subprocess("list", env=env)
    assert listed.returncode == 0 and "UNUSABLE" in listed.stdout and "Boom" in listed.stdout
    uses = tmp_path / "uses.yaml"
    uses.write_text(SUITE.replace("fgsm", "boom"))
    proc = robench_subprocess("run", str(uses), "--out", str(tmp_path / "no"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "boom" in proc.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_a_plugin_changing_the_working_folder_does_not_move_a_relative_out(
        tmp_path, cli_env, robench_subprocess):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    env = plugin_site(tmp_path, "robench_chdir_plugin",
                      f"import os\nos.chdir({str(elsewhere)!r})\n"
                      "from robench.attacks.fgsm import FGSM\n\n\n"
                      "class Moved(FGSM):\n    pass\n",
                      "robench.attacks", "moved = robench_chdir_plugin:Moved", cli_env)
    (work / "s.yaml").write_text(SUITE)
    proc = robench_subprocess("run", "s.yaml", "--out", "rel/out", "--quiet", env=env,
                              cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "rel" / "out" / "results.csv").exists()
    assert list(elsewhere.iterdir()) == []
