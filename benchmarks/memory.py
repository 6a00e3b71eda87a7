"""Peak resident memory of a serial `robench run` of fgsm_lenet's defenses, and what grows.

Not a test. It writes a reduced copy of ``suites/fgsm_lenet.yaml`` that keeps what memory
depends on (the full MNIST training split, all 17 defenses, every attack including standard
AutoAttack) and shrinks what only costs time (300 evaluation images and attack limits, 1
training epoch, 1 unlearning round of 200 forget / 1000 retain images), runs it in a fresh
process under ``/usr/bin/time -v`` with a private model cache (everything trained cold), and
prints the peak RSS and the per-defense peaks the run logs (``[label] done (peak RSS ..)``).

    python benchmarks/memory.py --data-dir ../shared/data [--keep-heap]

``--keep-heap`` runs without robench's ``malloc_trim`` between defenses (``robench.memory``), for
the before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "suites" / "fgsm_lenet.yaml"
EVAL_IMAGES = 300

RUNNER = """
import sys
import robench.executors.serial as serial
import robench.runner as runner
if sys.argv[3] == "keep-heap":  # every call that gives freed heap back, off
    runner.release_freed_memory = serial.release_freed_memory = lambda: None
runner.run_suite(sys.argv[1], runner.RunOptions(out=sys.argv[2], quiet=True, device="cpu"))
"""


def reduced_suite(path: Path) -> None:
    suite = yaml.safe_load(SUITE.read_text())
    suite["name"] = "fgsm_lenet_memory"
    suite["data"]["eval_limit"] = EVAL_IMAGES
    suite["train"]["epochs"] = 1
    for attack in suite["attacks"]:
        if attack.get("limit"):
            attack["limit"] = min(attack["limit"], EVAL_IMAGES)
    for defense in suite["defenses"]:
        params = defense.get("params") or {}
        if "rounds" in params:
            params.update(rounds=1, forget_size=200, retain_size=1000)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep-heap", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite, out = Path(tmp) / "suite.yaml", Path(tmp) / "out"
        reduced_suite(suite)
        env = dict(os.environ, ROBENCH_CACHE_DIR=str(Path(tmp) / "cache"))
        if args.data_dir:
            env["ROBENCH_DATA_DIR"] = args.data_dir
        mode = "keep-heap" if args.keep_heap else "default"
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", RUNNER, str(suite),
                               str(out), mode], env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)
        print(f"mode {mode}: peak RSS {int(peak.group(1)) / 2**20:.2f} GB, wall {wall.group(1)}")
        for line in (out / "run.log").read_text().splitlines():
            if " done (peak RSS" in line:
                print("  " + line.split(" ", 1)[1])


if __name__ == "__main__":
    main()
