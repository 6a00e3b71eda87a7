"""The out-of-tree example defense (examples/robench-example-defense): installed as a real
wheel into a temporary folder (nothing in the environment changes), found through its
``robench.defenses`` entry point by ``robench list``, and run by ``robench run`` on real MNIST."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "robench-example-defense"

SUITE = """\
name: plugin_smoke
seed: 0
data: {dataset: mnist, eval_limit: 200, validation_size: 50000}   # 10 000 training images
model: {name: lenet5}
train: {epochs: 1}
defenses:
  - name: none
  - name: gaussian_augment
    label: gauss:0.3
    params: {sigma: 0.3, epochs: 1}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
"""


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def plugin_env(tmp_path, cli_env) -> dict[str, str]:
    """Build and install the example into tmp_path/site; an env that puts it on the path."""
    source = tmp_path / "src"  # build from a copy: building writes build/ and *.egg-info
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    # no network: no index, no build isolation (setuptools is already installed), no deps
    done = _run(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "--target", str(site), str(source)],
                cli_env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(site.glob("robench_example_defense-*.dist-info/entry_points.txt"))
    env = dict(cli_env)
    env["OMP_NUM_THREADS"] = "1"  # small runs: one thread is as fast and immune to a busy CPU
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_installed_plugin_is_listed_and_runs_in_a_suite(tmp_path, plugin_env):
    listed = _run(["-m", "robench.cli", "list"], plugin_env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if "gaussian_augment" in ln)
    assert "Gaussian data augmentation" in line

    suite = tmp_path / "plugin_smoke.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    ran = _run(["-m", "robench.cli", "run", str(suite), "--out", str(out), "--quiet"],
               plugin_env, tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    results = pd.read_csv(out / "results.csv")
    gauss = results[results["defense"] == "gauss:0.3"].sort_values("eps")
    assert list(gauss["defense_name"]) == ["gaussian_augment"] * 2
    assert list(gauss["eps"]) == [0.0, 0.1] and (gauss["n"] == 200).all()
    assert gauss["clean_acc"].iloc[0] > 0.8  # fine-tuning kept a working classifier
    assert gauss["robust_acc"].iloc[0] == gauss["clean_acc"].iloc[0]  # eps 0 changes nothing
    metrics = pd.read_csv(out / "defense_metrics.csv")
    noisy = metrics[(metrics["defense"] == "gauss:0.3") & (metrics["metric"] == "noisy_acc")]
    assert list(noisy["step"]) == [1] and 0.5 < noisy["value"].iloc[0] <= 1.0


@pytest.mark.slow
def test_plugin_params_are_validated_at_suite_load(tmp_path, plugin_env):
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.replace("sigma: 0.3", "sigma: -1.0"))
    ran = _run(["-m", "robench.cli", "run", str(suite), "--out", str(tmp_path / "o")],
               plugin_env, tmp_path)
    assert ran.returncode == 2
    assert f"{suite}: defenses[1].params.sigma: Input should be greater than 0" in ran.stderr
    assert not (tmp_path / "o").exists()  # failed before any work
