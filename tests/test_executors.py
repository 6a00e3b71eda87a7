"""The executors of ``robench run``: the serial reference never imports Ray; the Ray executor
gives exactly the serial results, resumes after kill -9, and refuses bad options in one line."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from robench.cli import app
from robench.config import parse_suite
from robench.errors import UserError
from robench.executors import (
    AUTH_VARS,
    EXECUTORS,
    INSTALL_HINT,
    RayCluster,
    check_options,
    chunks,
    probe,
    temp_root,
)
from robench.plan import resolve
from robench.progress import Reporter
from robench.results import TIMING_COLUMNS
from robench.tasks import merge_outcomes, run_attack_cells

from .conftest import REPO, kill_when_written

SUITE = """
name: executors
seed: 0
data: {dataset: mnist, eval_limit: 1200, validation_size: 55000}
train: {epochs: 1}
adaptive: off               # the cells counted here are the suite's own
defenses:
  - name: none
  - name: bit_depth_reduction
    params: {bits: 2}
attacks:
  - name: fgsm
    eps: [0.0, 0.1, 0.3]
  - name: pgd
    eps: [0.1, 0.3]
    params: {steps: 3, alpha: 0.1}
  - name: transfer
    eps: [0.2]
    params: {source: none, attack: fgsm}
"""
TINY = """
name: tiny
data: {dataset: mnist, eval_limit: 20}
train: {epochs: 0}
defenses: [{name: none}]
attacks: [{name: fgsm, eps: [0.1]}]
"""


def auth_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in AUTH_VARS}


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("robench: error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def ray_address():
    """A local 2-CPU Ray cluster for this module's tests (robench's own, as ``--executor ray``
    starts it; stopped after them, so it takes no CPU from later test files); its address and
    token reach the CLI subprocesses through the environment."""
    cluster = RayCluster(jobs=2, quiet=True).open()
    try:
        yield cluster.ray.get_runtime_context().gcs_address
    finally:
        cluster.close()


# -- bad options: one line, exit 2, nothing written ------------------------------------------
@pytest.mark.parametrize("args,fragments", [
    (["--executor", "dask"], ["--executor:", "unknown executor 'dask'", "serial or ray"]),
    (["--executor", "ray", "--jobs", "0"], ["--jobs:", "positive", "(got 0)"]),
    (["--executor", "ray", "--jobs", "-3"], ["--jobs:", "(got -3)"]),
    (["--jobs", "2"], ["--jobs:", "only with --executor ray"]),
    (["--address", "auto"], ["--address:", "only with --executor ray"]),
    (["--executor", "ray", "--address", " "], ["--address:", "empty address"]),
    (["--executor", "ray", "--address", "10.0.0.1:6379", "--jobs", "2"],
     ["--jobs:", "names an existing one"]),
    (["--executor", "ray", "--address", "no-port"], ["--address:", "HOST:PORT", "no-port"]),
], ids=["unknown", "jobs0", "jobs_negative", "jobs_serial", "address_serial", "address_empty",
        "jobs_and_address", "address_format"])
def test_bad_executor_options(tmp_path, mnist_root, args, fragments):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    env_before = auth_env()
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--data-dir",
                                      str(mnist_root), *args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    for fragment in fragments:
        assert fragment in line
    assert not out.exists()
    assert auth_env() == env_before  # no Ray auth variables left behind


def test_check_options_accepts_the_good_ones(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert EXECUTORS == ("serial", "ray")
    for executor, jobs, address in [("serial", None, None), ("ray", None, None),
                                    ("ray", 4, None), ("ray", None, "auto")]:
        check_options(executor, jobs, address)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(UserError, match="RAY_ADDRESS names an existing one"):
        check_options("ray", 2, None)


def test_ray_not_installed(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    env_before = auth_env()
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--data-dir",
                                      str(mnist_root), "--executor", "ray"])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "--executor:" in line and INSTALL_HINT in line and "not installed" in line
    assert not out.exists()
    assert auth_env() == env_before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("address", [f"127.0.0.1:{free_port()}", "203.0.113.1:6379",
                                     f"ray://127.0.0.1:{free_port()}"],
                         ids=["refused", "blackhole", "client"])
def test_unreachable_address(tmp_path, mnist_root, address):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--data-dir",
                                      str(mnist_root), "--executor", "ray",
                                      "--address", address])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "--address:" in line and f"cannot reach a Ray cluster at {address}" in line
    assert not out.exists()


def test_unreachable_ray_address_variable_is_named(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    cluster = RayCluster()
    assert not cluster.local and cluster.where == "RAY_ADDRESS"
    with pytest.raises(UserError, match="RAY_ADDRESS: cannot reach"):
        cluster.open()


def test_probe_reaches_a_listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe(f"127.0.0.1:{server.getsockname()[1]}", "--address")  # no error
    with pytest.raises(UserError, match="expected HOST:PORT"):
        probe("localhost", "--address")


def test_temp_root_keeps_unix_socket_paths_short(monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/" + "x" * 60)
    assert temp_root() == "/tmp"
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp")
    assert temp_root() == "/var/tmp"


# -- the serial reference ---------------------------------------------------------------------
@pytest.mark.slow
def test_serial_run_does_not_import_ray(tmp_path, cli_env):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    code = ("import sys\nfrom robench.runner import RunOptions, run_suite\n"
            f"run_suite({str(suite)!r}, RunOptions(out={str(tmp_path / 'out')!r}, quiet=True))\n"
            "print('ray' in sys.modules, 'robench.executors' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(cli_env, OMP_NUM_THREADS="1"), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]  # the options module, never Ray
    assert (tmp_path / "out" / "results.csv").exists()


# -- chunking keeps every number ----------------------------------------------------------------
@pytest.mark.slow
def test_chunks_of_whole_batches_give_the_unchunked_outcomes(mnist, trained_lenet):
    plan = resolve(parse_suite({
        "name": "chunks", "data": {"dataset": "mnist"}, "defenses": [{"name": "none"}],
        "attacks": [{"name": "pgd", "eps": [0.1, 0.2],
                     "params": {"steps": 3, "alpha": 0.05}}]}, "chunks"), "chunks")
    spec = plan.attacks[0]
    data = mnist.test.head(2500)
    parts = list(chunks(data, size=1000))
    assert [len(p) for p in parts] == [1000, 1000, 500]
    assert torch.equal(torch.cat([p.ids for p in parts]), data.ids)
    quiet = Reporter(quiet=True)
    whole = run_attack_cells(spec, trained_lenet, None, spec.eps, data, quiet, "whole")
    pieces = merge_outcomes([run_attack_cells(spec, trained_lenet, None, spec.eps, p, quiet, "p")
                             for p in parts])
    assert [o.eps for o in pieces] == [0.1, 0.2]
    for a, b in zip(whole, pieces, strict=True):
        assert torch.equal(a.clean_ok, b.clean_ok) and torch.equal(a.adv_ok, b.adv_ok)
    assert whole[1].robust_acc < whole[0].robust_acc < whole[0].clean_acc  # a real attack


# -- Ray end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_run_gives_the_serial_results(tmp_path, ray_address, cli_env, robench_subprocess):
    suite = tmp_path / "executors.yaml"
    suite.write_text(SUITE)
    serial, ray = tmp_path / "serial", tmp_path / "ray"
    # tasks run with one torch thread: the serial reference does too (same float order)
    env = dict(cli_env, OMP_NUM_THREADS="1")
    proc = robench_subprocess("run", str(suite), "--out", str(serial), "--quiet",
                              env=dict(env, ROBENCH_CACHE_DIR=str(tmp_path / "cache-serial")))
    assert proc.returncode == 0, proc.stderr
    proc = robench_subprocess("run", str(suite), "--out", str(ray), "--quiet", "--executor",
                              "ray", "--address", ray_address,
                              env=dict(env, ROBENCH_CACHE_DIR=str(tmp_path / "cache-ray")))
    assert proc.returncode == 0, proc.stderr

    a = pd.read_csv(serial / "results.csv").drop(columns=TIMING_COLUMNS)
    b = pd.read_csv(ray / "results.csv").drop(columns=TIMING_COLUMNS)
    assert len(a) == 2 * 6 and (a["n"] == 1200).all()  # two chunks per cell
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_parquet(serial / "outcomes.parquet"),
                                  pd.read_parquet(ray / "outcomes.parquet"))
    assert (serial / "diagnostics.json").read_text() == (ray / "diagnostics.json").read_text()
    assert (serial / "leaderboard.csv").read_text() == (ray / "leaderboard.csv").read_text()
    # the model a Ray worker trained reaches the driver's folder, byte for byte the serial one
    models = sorted(p.name for p in serial.glob("model-*.safetensors"))
    assert len(models) == 1  # the baseline; bit_depth_reduction is not cacheable
    assert models == sorted(p.name for p in ray.glob("model-*.safetensors"))
    assert (serial / models[0]).read_bytes() == (ray / models[0]).read_bytes()
    log = (ray / "run.log").read_text()
    assert "baseline lenet5: trained 1 epochs" in log  # trained by a task, not from a cache
    record = json.loads((ray / "run.json").read_text())
    assert record["executor"]["name"] == "ray" and record["threads"] == 1
    assert "executor" not in json.loads((serial / "run.json").read_text())


@pytest.mark.slow
def test_cuda_on_a_cluster_without_gpus(tmp_path, ray_address, cli_env, robench_subprocess):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    proc = robench_subprocess("run", str(suite), "--out", str(out), "--executor", "ray",
                              "--address", ray_address, "--device", "cuda", env=cli_env)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--device:" in line and "the Ray cluster has no GPU" in line
    assert not out.exists()


def ray_processes(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (a local cluster's temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume(tmp_path, cli_env):
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE.replace("eval_limit: 1200", "eval_limit: 600")
                     .replace("steps: 3", "steps: 20"))
    out = tmp_path / "out"
    short = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # Ray's socket paths stay short
    try:
        env = dict(cli_env, TMPDIR=str(short))
        args = [sys.executable, "-m", "robench.cli", "run", str(suite), "--out", str(out),
                "--quiet", "--executor", "ray", "--jobs", "2"]
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        csv = out / "results.csv"
        kill_when_written(proc, csv, 400)
        deadline = time.time()
        partial = pd.read_csv(csv)  # never torn: written by rename
        assert 0 < len(partial) < 12
        done_before = partial.set_index(["defense", "attack", "eps"])["created_at"]
        # the local cluster dies with its driver (Ray's reaper): wait for that, not for a time
        folders = list(short.glob("robench-ray-*"))
        assert len(folders) == 1
        while ray_processes(folders[0]) and time.time() < deadline + 120:
            time.sleep(0.5)
        assert not ray_processes(folders[0]), "Ray processes outlived their killed driver"

        resumed = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        final = pd.read_csv(csv)
        assert len(final) == 12
        assert not final.duplicated(["defense", "attack", "eps", "seed"]).any()
        after = final.set_index(["defense", "attack", "eps"])["created_at"]
        for key, stamp in done_before.items():
            assert after[key] == stamp  # finished cells were not recomputed
        # (which cells finished before the kill depends on the task order: longest attacks are
        # submitted first, so a whole attack need not be done; the stamps above are the check)
        log = (out / "run.log").read_text().split("resuming:")[-1]
        assert "loaded from cache" in log
        assert not list(out.glob(".*.tmp"))
        # a run that ended without error leaves no Ray folder behind
        assert sorted(short.glob("robench-ray-*")) == folders
    finally:
        shutil.rmtree(short, ignore_errors=True)  # the killed run's Ray logs


@pytest.mark.slow
def test_unreachable_address_is_one_line_in_a_real_process(tmp_path, cli_env,
                                                           robench_subprocess):
    """Ray's C++ client writes its own log lines to stderr: none may get through."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    proc = robench_subprocess("run", str(suite), "--out", str(out), "--executor", "ray",
                              "--address", "203.0.113.1:6379", env=cli_env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert "--address: cannot reach a Ray cluster at 203.0.113.1:6379" in line
    assert not out.exists()


@pytest.mark.slow
def test_local_clusters_write_nothing_home_and_clean_up(tmp_path, cli_env):
    """Two local clusters one after the other in one process (one token per process: Ray keeps
    the first), with token authentication, and nothing written under the home folder."""
    home, tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    home.mkdir()
    code = ("import os\nfrom robench.executors import RayCluster\n"
            "for _ in range(2):\n"
            "    c = RayCluster(jobs=1, quiet=True).open()\n"
            "    print(os.environ['RAY_AUTH_MODE'], c.ray.get(c.ray.put(7)))\n"
            "    c.close()\n"
            "print('RAY_AUTH_TOKEN' in os.environ)\n")
    env = {k: v for k, v in cli_env.items() if not k.startswith("RAY_")}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, HOME=str(home), TMPDIR=str(tmp)), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["token", "7", "token", "7", "False"]
        assert list(home.iterdir()) == []      # no ~/.ray/auth_token
        assert list(tmp.iterdir()) == []       # each run's Ray folder removed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_temp_root_leaves_room_for_rays_socket_paths(monkeypatch):
    """Ray puts ~83 characters of socket path below the cluster's folder (107 bytes at most):
    a TMPDIR of 25 characters crashed a run in review."""
    monkeypatch.setattr(tempfile, "gettempdir", lambda: "/tmp/hostile-ray/o_tmpout")
    assert temp_root() == "/tmp"
    monkeypatch.setattr(tempfile, "gettempdir", lambda: "/var/tmp")
    assert temp_root() == "/var/tmp"


@pytest.mark.parametrize("given,token_set", [({}, True), ({"RAY_AUTH_MODE": "token"}, True),
                                             ({"RAY_AUTH_MODE": "disabled"}, False),
                                             ({"RAY_AUTH_TOKEN": "mine"}, False)])
def test_local_cluster_token_never_lands_in_home(monkeypatch, given, token_set):
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    cluster = RayCluster()
    cluster._auth_env()
    try:
        assert (os.environ.get("RAY_AUTH_TOKEN") not in (None, "mine")) == token_set
    finally:
        cluster.close()
    assert {name: os.environ.get(name) for name in AUTH_VARS} == \
        {name: given.get(name) for name in AUTH_VARS}  # restored after the run


def test_a_local_cluster_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    import robench.executors.ray_cluster as executors

    class FakeRay:
        _raylet = None

        @staticmethod
        def init(**kwargs):
            raise ValueError("Resource quantities must be at most 1e14")

        @staticmethod
        def is_initialized():
            return False

    monkeypatch.setattr(executors, "import_ray", lambda: FakeRay)
    monkeypatch.setattr(executors, "temp_root", lambda: str(tmp_path))
    with pytest.raises(UserError) as caught:
        RayCluster(jobs=10**20).open()
    text = str(caught.value)
    assert "cannot start a local Ray cluster" in text and "1e14" in text
    assert "\n" not in text and str(tmp_path) in text  # names the folder it kept for the logs
