"""Code verifier and sandbox: real HumanEval/MBPP solutions, literal programs, limits."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest

from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.code import CodeVerifier, build_cases, extract_code, outputs_match
from posttrain.verifiers.sandbox import run_program

DATA = Path(os.environ.get("POSTTRAIN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
FAST = CodeVerifier(timeout_s=2.0, memory_mb=512)


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```\nprint(1)\n```", "print(1)\n"),
        ("```py\nx = 1\n```\ntext\n```python\nprint(2)\n```", "print(2)\n"),
        ("```python\nprint(1)\n```\n```text\noutput\n```", "print(1)\n"),
        ("<think>```python\nprint(0)\n```</think>```python\nprint(3)\n```", "print(3)\n"),
        ("```cpp\nint main(){}\n```", "int main(){}\n"),
        ("def f(x):\n    return x\n", "def f(x):\n    return x\n"),
        ("I don't know how to solve this.", None),
        ("<think>cut off ```python\nprint(1)\n```", None),
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


@pytest.mark.parametrize(
    "got, want, checker, match",
    [
        ("1 2\n3\n", "1  2\n3", None, True),
        ("1 2\n\n", "1 2", None, True),
        ("1 2 3", "1 2\n3", None, False),
        ("Case #1: 0.3333333", "Case #1: 0.333333333", "float_tolerance 1e-6", True),
        ("Case #1: 0.3334", "Case #1: 0.333333333", "float_tolerance 1e-6", False),
        ("Case #1: 1000000.5", "Case #1: 1000000.0", "float_tolerance 1e-6", True),  # relative
        ("Case #2: 0.5", "Case #1: 0.5", "float_tolerance 1e-6", False),
        ("1.0 2.0", "1.0", "float_tolerance 1e-6", False),
    ],
)
def test_outputs_match(got, want, checker, match):
    assert outputs_match(got, want, checker) is match


def test_unknown_tests_shape_raises():
    with pytest.raises(ValueError, match="tests"):
        build_cases("print(1)", {"nonsense": 1})


def test_stdin_stdout_and_inputs_outputs_shapes():
    code = fenced("a, b = map(int, input().split())\nprint(a + b)")
    pairs = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "11"}]
    listed = FAST.verify(code, {"tests": pairs})
    assert (listed.score, listed.passed) == (0.5, False)
    assert listed.details["verdicts"] == ["accepted", "wrong_answer"]
    columns = FAST.verify(code, {"tests": {"inputs": ["1 2\n", "2 2\n"], "outputs": ["3\n", "4\n"]}})
    assert (columns.score, columns.passed) == (1.0, True)


def test_float_tolerance_checker():
    code = fenced("n = int(input())\nprint(f'Case #1: {1 / n:.9f}')")
    tests = [{"input": "3\n", "output": "Case #1: 0.333333", "checker": "float_tolerance 1e-6"}]
    assert FAST.verify(code, {"tests": tests}).passed
    tests[0]["checker"] = None
    assert not FAST.verify(code, {"tests": tests}).passed


@pytest.mark.parametrize(
    "program, verdict",
    [
        ("while True:\n    pass", "time_limit"),
        ("import time\ntime.sleep(30)", "time_limit"),
        ("x = bytearray(1 << 30)", "memory_limit"),
        ("raise SystemExit(3)", "runtime_error"),
        ("1 / 0", "runtime_error"),
        ("print('wrong')", "wrong_answer"),
    ],
)
def test_failure_verdicts(program, verdict):
    verifier = CodeVerifier(timeout_s=1.0, memory_mb=512)
    result = verifier.verify(fenced(program), {"tests": [{"input": "", "output": "ok"}]})
    assert result.details["verdicts"] == [verdict]
    assert (result.score, result.passed) == (0.0, False)


def test_no_code_found():
    verdict = get_verifier("code").verify("No idea, sorry.", {"tests": [{"input": "", "output": ""}]})
    assert (verdict.score, verdict.passed, verdict.details["reason"]) == (0.0, False, "no code found")


def test_max_tests_limits_runs():
    tests = [{"input": "", "output": "1"}] * 5
    verdict = CodeVerifier(max_tests=2).verify(fenced("print(1)"), {"tests": tests})
    assert verdict.details["n_tests"] == 2 and verdict.passed


def test_sandbox_scrubs_env_and_removes_workdir(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("HF_TOKEN", "do-not-leak")
    result = run_program("import os\nprint(os.getcwd())\nprint(sorted(os.environ))", timeout_s=5.0)
    assert result.returncode == 0
    workdir, env_names = result.stdout.splitlines()
    assert "AWS_SECRET_ACCESS_KEY" not in env_names and "HF_TOKEN" not in env_names
    assert not Path(workdir).exists()


def test_sandbox_caps_output_and_kills_process_group():
    flooder = "import sys\nwhile True:\n    sys.stdout.write('y' * 4096)"
    flood = run_program(flooder, timeout_s=5.0, max_output_bytes=1 << 16)
    assert flood.output_truncated and len(flood.stdout) == 1 << 16 and not flood.timed_out
    orphan = run_program("import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('parent')")
    assert orphan.stdout == "parent\n" and orphan.returncode == 0 and orphan.wall_s < 3.0


def _humaneval(limit: int) -> list[dict]:
    with gzip.open(DATA / "benchmarks" / "humaneval.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


@pytest.mark.parametrize("row", _humaneval(10), ids=lambda r: r["task_id"])
def test_humaneval_canonical_solutions(row):
    tests = {"functional": f"{row['test']}\ncheck({row['entry_point']})\n"}
    solved = FAST.verify(fenced(row["prompt"] + row["canonical_solution"]), {"tests": tests})
    assert solved.passed, solved.details
    broken = re.sub(r"\breturn\b", "_ =", row["canonical_solution"])  # no return: returns None
    assert not FAST.verify(fenced(row["prompt"] + broken), {"tests": tests}).passed


def _mbpp(task_ids: range) -> list[dict]:
    with open(DATA / "benchmarks" / "mbpp.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r["task_id"] in task_ids]


# 927 is one of the two MBPP rows with setup code (it uses the solution's Node class).
MBPP_ROWS = _mbpp(range(601, 611)) + _mbpp(range(927, 928))


@pytest.mark.parametrize("row", MBPP_ROWS, ids=lambda r: f"mbpp{r['task_id']}")
def test_mbpp_reference_code(row):
    tests = {"asserts": row["test_list"], "setup": row["test_setup_code"]}
    verdict = FAST.verify(fenced(row["code"]), {"tests": tests})
    assert verdict.passed, verdict.details
    assert verdict.details["n_tests"] == len(row["test_list"])
