"""Bounded suite files: YAML alias bombs (billion laughs), deep nesting and oversized files end
in one short line and exit code 2, in a real process held to a memory limit, before any
validation walks the document; a long but legal suite is unaffected."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from robench.suite_yaml import MAX_SUITE_BYTES, MAX_SUITE_DEPTH, MAX_SUITE_NODES

from .conftest import REPO

#: address space for the whole process: ``robench plan`` on a 50-image suite needs about 5 GiB
#: (torch's libraries and the dataset fingerprint, with one BLAS thread); a regression that
#: expands a bomb fails with MemoryError here instead of eating the machine
ADDRESS_SPACE = 6 * 2**30
#: a refusal's line stays this short however large the input (path + key path + message)
MAX_LINE = 2000

HEAD = """\
name: bounded
device: cpu
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
"""
UNLEARNING = "defenses:\n  - name: none\n  - name: unlearning\n" \
             "    params: {rounds: 1, forget_size: 50, retain_size: 50, method: ssd,\n" \
             "             method_params: {BOMB}}\n"
ATTACKS = "attacks:\n  - name: pgd\n    eps: [0.1]\n    params: {steps: 2, extra: BOMB}\n"


def laughs(levels: int = 9, width: int = 9) -> str:
    """A flow sequence whose aliases expand to width**levels strings (~640 bytes)."""
    parts = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        parts.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


def nested_mapping(depth: int) -> str:
    return "{a: " * depth + "1" + "}" * depth


def nested_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def chained_aliases(depth: int) -> str:
    """Every anchor wraps the previous one: small and shallow as written, ``depth`` deep once
    the aliases are expanded."""
    return "[&c0 [1], " + ", ".join(f"&c{i} [*c{i - 1}]" for i in range(1, depth)) + "]"


def suite(attacks: str = "BOMB", defenses: str = "", top: str = "") -> str:
    attack_part = ATTACKS.replace("BOMB", attacks) if attacks != "BOMB" else \
        ATTACKS.replace("extra: BOMB", "alpha: 0.05")
    return HEAD + top + defenses + attack_part


CASES = [
    # id, suite text, fragments of the message
    ("bomb_attack_params", suite(attacks=laughs()), ["attacks[0].params.extra", "more than"]),
    ("bomb_method_params", suite(defenses=UNLEARNING.replace("BOMB", f"x: {laughs()}")),
     ["defenses[1].params.method_params", "more than"]),
    ("bomb_top_level", suite(top=f"colour: {laughs()}\n"), [": colour", "more than"]),
    ("bomb_in_merge_key", suite(attacks=f"{{<<: {{a: {laughs()}}}, z: 1}}"),
     ["attacks[0].params.extra", "more than"]),
    ("bomb_wide", suite(attacks=laughs(levels=3, width=200)), ["attacks[0].params.extra"]),
    ("nested_mapping_500", suite(attacks=nested_mapping(500)), ["deeper than", "line 8"]),
    ("nested_list_500", suite(attacks=nested_list(500)), ["deeper than", "line 8"]),
    ("nested_block_300", suite(top="deep:\n" + "".join(
        f"{' ' * (i + 1)}k{i}:\n" for i in range(300)) + " " * 301 + "end: 1\n"),
     ["deeper than"]),
    ("nested_top_list_500", nested_list(500), ["deeper than"]),
    ("chained_aliases_200", suite(attacks=chained_aliases(200)),
     ["attacks[0].params.extra", "deeper than"]),
    ("recursive_alias", suite(attacks="&r [1, *r]"), ["attacks[0].params.extra", "itself"]),
    # as long as a file may be, no aliases: the schema's one line, the value not repeated
    ("flat_list_near_cap", suite(attacks="[" + "1," * (MAX_SUITE_BYTES // 2 - 200) + "1]"),
     ["attacks[0].params.extra", "unknown key"]),
    ("oversized_file", suite() + "# " + "x" * MAX_SUITE_BYTES + "\n", ["larger than"]),
    # the cap's cut falls inside a two-byte character: still "larger than", not "not UTF-8"
    ("oversized_file_cut_in_a_char", suite() + "# " + "\u00e9" * 70_000 + "\n",
     ["larger than"]),
]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def robench_limited(args: list[str], env: dict[str, str], timeout: float = 120
                    ) -> subprocess.CompletedProcess:
    """The real CLI in a process held to ``ADDRESS_SPACE``, one BLAS thread and no GPU (CUDA
    maps far more address space than it uses); ``timeout`` only guards against a hang."""
    env = dict(env, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MALLOC_ARENA_MAX="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout,
                          preexec_fn=_limit_memory)


def assert_refused(proc: subprocess.CompletedProcess, path: Path, fragments: list[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[:3000]
    assert len(lines[0]) <= MAX_LINE, lines[0][:3000]
    assert lines[0].startswith(f"robench: error: {path}: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def refused_by(command: str, tmp_path: Path, cli_env: dict[str, str], text: str,
               fragments: list[str]) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    extra = ["--no-calibrate"] if command == "plan" else ["--out", str(out)]
    proc = robench_limited([command, str(path), *extra], cli_env)
    assert_refused(proc, path, fragments)
    assert not out.exists()  # nothing written
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "suite.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("case_id,text,fragments", CASES, ids=[c[0] for c in CASES])
def test_unbounded_suite_refused_by_plan(tmp_path, cli_env, case_id, text, fragments):
    refused_by("plan", tmp_path, cli_env, text, fragments)


RUN_CASES = [c for c in CASES if c[0] in ("bomb_attack_params", "bomb_method_params",
                                         "nested_mapping_500", "chained_aliases_200")]


@pytest.mark.slow
@pytest.mark.parametrize("case_id,text,fragments", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_unbounded_suite_refused_by_run(tmp_path, cli_env, case_id, text, fragments):
    refused_by("run", tmp_path, cli_env, text, fragments)


def long_legal_suite() -> str:
    """Far larger than any shipped suite (a few hundred values, 6 levels deep) and still well
    inside the caps: params shared through an anchor and merge keys, 150 attack entries of 30
    eps each."""
    eps = ", ".join(f"{i / 1000:g}" for i in range(30))
    lines = [HEAD, "defenses:\n  - name: none\n", "attacks:\n",
             f"  - {{name: pgd, label: pgd0, eps: [{eps}], "
             "params: &common {steps: 1, alpha: 0.05, random_start: false}}\n"]
    for i in range(1, 150):
        lines.append(f"  - {{name: pgd, label: pgd{i}, eps: [{eps}], "
                     f"params: {{<<: *common, steps: {i + 1}}}}}\n")
    return "".join(lines)


@pytest.mark.slow
def test_long_legal_suite_still_plans(tmp_path, cli_env):
    path = tmp_path / "suite.yaml"
    path.write_text(long_legal_suite())
    proc = robench_limited(["plan", str(path), "--no-calibrate"], cli_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


#: in this process (the fast lane): bombs only just over the cap, so that a regression costs
#: a few hundred thousand values, not the machine
FAST_CASES = [
    ("small_bomb", suite(attacks=laughs(levels=4, width=20)), "attacks[0].params.extra"),
    # a key that is not a scalar is named "?"
    ("small_bomb_in_key", suite(top=f"? {laughs(levels=4, width=20)}\n: 1\n"), "?[3]"),
    ("nested_mapping_500", suite(attacks=nested_mapping(500)), "line 8"),
    ("chained_aliases_200", suite(attacks=chained_aliases(200)), "attacks[0].params.extra"),
    ("recursive_alias", suite(attacks="&r [1, *r]"), "attacks[0].params.extra[1]"),
    ("recursive_mapping", suite(attacks="&m {a: 1, b: *m}"), "attacks[0].params.extra.b"),
]


@pytest.mark.parametrize("case_id,text,where", FAST_CASES, ids=[c[0] for c in FAST_CASES])
def test_bounds_checked_before_validation(tmp_path, case_id, text, where):
    from robench.config import load_suite
    from robench.errors import UserError

    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_suite(path)
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and where in line, line
    assert len(line) <= MAX_LINE and len(line.splitlines()) == 1


def test_caps_leave_room_for_the_shipped_suites():
    from robench.config import load_suite

    for path in sorted((REPO / "suites").glob("*.yaml")):
        assert load_suite(path).attacks  # loads under the caps
    assert MAX_SUITE_DEPTH >= 20 and MAX_SUITE_NODES >= 50_000


def test_error_lines_are_bounded_and_single():
    from robench.errors import UserError

    err = UserError("bad value " + "x" * 1_000_000 + "\nsecond line\u2028third\x85",
                    where="s.yaml: attacks[0].params.extra")
    text = str(err)
    assert text.startswith("s.yaml: attacks[0].params.extra: bad value ")
    assert len(text) <= MAX_LINE
    assert len(text.splitlines()) == 1


def test_nested_params_message_is_bounded(tmp_path, robench_cli):
    # an unlearning method's params are validated inside the defense's: the value shown in the
    # message was printed whole (800 kB for a bomb); a big legal-sized value must stay short
    path = tmp_path / "suite.yaml"
    big = "[" + ", ".join(["12345678"] * 2000) + "]"
    path.write_text(suite(defenses=UNLEARNING.replace("BOMB", f"alpha: {big}")))
    result = robench_cli("plan", str(path), "--no-calibrate")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) <= MAX_LINE, result.stderr[:3000]
    assert "method_params" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("data", [
    "\u00e9".encode() * 70_000,  # the cut at MAX_SUITE_BYTES + 1 splits an "é"
    "\U0001f600".encode() * 33_000,  # and a four-byte emoji
    b"\xff" + b"x" * MAX_SUITE_BYTES,  # not UTF-8 and too large: the size is the news
], ids=["two_byte_chars", "four_byte_chars", "latin1_byte"])
def test_an_oversized_suite_is_refused_for_its_size_whatever_its_bytes(tmp_path, data):
    from robench.config import load_suite
    from robench.errors import UserError

    path = tmp_path / "suite.yaml"
    path.write_bytes(data)
    assert len(data) > MAX_SUITE_BYTES
    with pytest.raises(UserError, match=f"larger than {MAX_SUITE_BYTES >> 10} KiB"):
        load_suite(path)
    path.write_bytes(data[:1000] + b"\xff")  # within the cap: its encoding is the news
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        load_suite(path)


@pytest.mark.parametrize("middle", ["k" * 20_000, "k\u202e" * 5_000, "\x85" * 9_000],
                         ids=["plain", "hidden_chars_between", "all_hidden"])
def test_a_long_where_keeps_its_start_and_its_key_paths_end(middle):
    # one_line cut before escaping only text[:limit * 8]: past 8000 characters the key path's
    # end, which its docstring promises to keep, was lost
    from robench.errors import MAX_WHERE, UserError, one_line

    where = "/data/suite.yaml: defenses[0]." + middle + ".params.steps"
    err = UserError("unknown key", where=where)
    assert err.where.startswith("/data/suite.yaml: defenses[0].")
    assert err.where.endswith(".params.steps"), err.where[-60:]
    assert len(err.where) <= MAX_WHERE and len(str(err).splitlines()) == 1
    hidden = one_line("a" * 9_000 + "\u202e.tail", 100)
    assert hidden.endswith("\\u202e.tail") and hidden.startswith("aaa") and len(hidden) <= 100
    assert one_line("short \u2028 text", 100) == "short \\u2028 text"
    escaped = one_line("\u202e" * 30, 100)  # under the limit until escaped: then cut too
    assert len(escaped) <= 100 and escaped.startswith("\\u202e") and " ... " in escaped


@pytest.mark.parametrize("key", ["seed", "eval_limit"])
def test_an_integer_python_cannot_convert_is_one_line(tmp_path, key):
    """Hostile-review finding: an integer of 5000 digits made PyYAML raise ValueError
    ("Exceeds the limit (4300 digits)"): a traceback instead of one line."""
    from robench.config import load_suite
    from robench.errors import UserError

    value = "9" * 5000
    text = (f"name: big\nseed: {value}\n" if key == "seed"
            else f"name: big\ndata: {{eval_limit: {value}}}\n")
    path = tmp_path / "big.yaml"
    path.write_text(text + "attacks:\n  - {name: fgsm, eps: [0.1]}\n")
    with pytest.raises(UserError) as info:
        load_suite(path)
    assert "invalid YAML value" in info.value.message and "\n" not in str(info.value)
