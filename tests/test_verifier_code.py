"""Code verifier and sandbox on literal programs: shapes, verdicts, limits, the batch pool.

Real data (HumanEval, MBPP, LeetCode, Code Jam) is in ``test_verifier_code_data.py``.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import pytest

from posttrain.verifiers import code as code_module
from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.code import CodeVerifier, build_cases, classify, extract_code, outputs_match
from posttrain.verifiers.sandbox import RunResult, run_program

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
        ("print('ok')", "accepted"),
        ("print('ok')\nexit()", "accepted"),  # site's exit/quit exist, though the sandbox skips site
        ("print('ok')\nquit(0)", "accepted"),
        ("if __name__ == '__main__':\n    print('ok')", "accepted"),
        ("print('wrong')", "wrong_answer"),
        ("print('ok')\nprint('extra')", "wrong_answer"),
        ("import sys\nwhile True:\n    sys.stdout.write('ok\\n' * 4096)", "wrong_answer"),  # output cap
        ("while True:\n    pass", "time_limit"),  # wall clock
        ("import time\ntime.sleep(30)", "time_limit"),  # wall clock, no CPU used
        # CPU rlimit: SIGXCPU (reported by bwrap as exit 152) reads as a time limit
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (0, 1))\nwhile True:\n    pass", "time_limit"),
        ("x = bytearray(1 << 30)", "memory_limit"),  # one allocation over the address-space cap
        ("x = []\nwhile True:\n    x.append(bytearray(1 << 20))", "memory_limit"),  # growing until refused
        ("s = 'ab'\nwhile True:\n    s += s", "memory_limit"),
        ("import os\nos.kill(os.getpid(), 9)", "memory_limit"),  # SIGKILL not sent by us: the OOM killer
        ("raise SystemExit(3)", "runtime_error"),
        ("1 / 0", "runtime_error"),
        ("try:\n    x = bytearray(1 << 30)\nexcept MemoryError:\n    raise ValueError('caught')", "runtime_error"),
        ("import os\nos.kill(os.getpid(), 11)", "runtime_error"),  # segfault
        ("def f(n):\n    return f(n + 1)\nf(0)", "runtime_error"),  # RecursionError
        ("open('big', 'wb').write(b'x' * (32 << 20))", "runtime_error"),  # file size rlimit
    ],
)
def test_verdicts(program, verdict):
    # 1 s keeps the time-limit cases short; allocating 512 MB in 1 MB pieces may take longer on a
    # busy machine (seen in CI: time_limit at 1.0 s), so memory cases get 10 s.
    verifier = CodeVerifier(timeout_s=10.0 if verdict == "memory_limit" else 1.0, memory_mb=512)
    result = verifier.verify(fenced(program), {"tests": [{"input": "", "output": "ok"}]})
    assert result.details["verdicts"] == [verdict], result.details
    assert (result.score, result.passed) == ((1.0, True) if verdict == "accepted" else (0.0, False))


@pytest.mark.parametrize(
    "program",
    ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()", "raise SystemExit",
     "import os\nos.close(1)"],
)
def test_exit_before_the_tests_is_not_a_pass(program):
    """A functional or assert test passes on exit 0 only if the tests ran to the end (the token)."""
    functional = {"functional": "def check(f):\n    assert f(1) == 2\ncheck(inc)\n"}
    asserts = {"asserts": ["assert inc(1) == 2", "assert inc(2) == 3"], "setup": ""}
    solution = "def inc(x):\n    return x + 1\n"
    for tests in (functional, asserts):
        assert FAST.verify(fenced(solution), {"tests": tests}).passed
        verdict = FAST.verify(fenced(solution + program), {"tests": tests})
        assert set(verdict.details["verdicts"]) == {"runtime_error"}, verdict.details


@pytest.mark.parametrize(
    "body, verdict",
    [("return x + 1", "accepted"), ("return x", "wrong_answer"), ("return x / 0", "runtime_error"),
     ("assert x < 0\n    return x + 1", "wrong_answer")],  # the candidate's own failed assert too
)
def test_functional_and_assert_verdicts(body, verdict):
    """A failed check (AssertionError) is a wrong answer; any other exception a runtime error."""
    code = fenced(f"def inc(x):\n    {body}")
    functional = {"functional": "def check(f):\n    assert f(1) == 2\ncheck(inc)\n"}
    asserts = {"asserts": ["assert inc(1) == 2"], "setup": ""}
    for tests in (functional, asserts):
        assert FAST.verify(code, {"tests": tests}).details["verdicts"] == [verdict]


def test_replaced_stdout_still_passes():
    """The token goes to fd 1, so a candidate that swaps ``sys.stdout`` still gets its pass."""
    code = "import sys, io\nsys.stdout = io.StringIO()\ndef inc(x):\n    print(x)\n    return x + 1"
    assert FAST.verify(fenced(code), {"tests": {"asserts": ["assert inc(1) == 2"], "setup": ""}}).passed


def test_future_import_and_prints_in_functional_code():
    code = "from __future__ import annotations\ndef inc(x: int) -> int:\n    print('noise', end='')\n    return x + 1"
    tests = {"functional": "def check(f):\n    assert f(1) == 2\ncheck(inc)\n", "setup": "import math"}
    assert FAST.verify(fenced(code), {"tests": tests}).passed
    assert FAST.verify(fenced(code), {"tests": {"asserts": ["assert inc(1) == 2"], "setup": ""}}).passed


def test_classify_precedence():
    case = build_cases("print(1)", [{"input": "", "output": "1"}])[0]

    def result(**kw):
        return RunResult(**{"stdout": "1\n", "stderr": "", "returncode": 0, "timed_out": False,
                            "memory_exceeded": False, "wall_s": 0.1, **kw})

    assert classify(result(), case) == "accepted"
    assert classify(result(returncode=-9, timed_out=True, memory_exceeded=True), case) == "time_limit"
    assert classify(result(returncode=-9, output_truncated=True), case) == "wrong_answer"
    assert classify(result(returncode=1, memory_exceeded=True), case) == "memory_limit"
    assert classify(result(returncode=1), case) == "runtime_error"
    assert classify(result(stdout="2"), case) == "wrong_answer"
    token_case = build_cases("x = 1", {"asserts": ["assert x == 2"], "setup": ""})[0]
    failed = "Traceback (most recent call last):\n  File ...\nAssertionError\n"
    assert classify(result(returncode=1, stderr=failed), token_case) == "wrong_answer"
    assert classify(result(returncode=1, stderr="ZeroDivisionError: division by zero\n"), token_case) == "runtime_error"
    assert classify(result(stdout=f"{token_case.token}\n"), token_case) == "accepted"
    assert classify(result(stdout="1\n"), token_case) == "runtime_error"  # exited before the tests finished


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


def test_verify_batch_keeps_order_and_mixes_shapes():
    inc = fenced("def inc(x):\n    return x + 1")
    echo = fenced("print(input())")
    completions = [inc, echo, "no code here", inc, fenced("def inc(x):\n    return x")]
    references = [
        {"tests": {"asserts": ["assert inc(1) == 2", "assert inc(5) == 6"], "setup": ""}},
        {"tests": [{"input": "a\n", "output": "a"}, {"input": "b\n", "output": "c"}]},
        {"tests": [{"input": "", "output": ""}]},
        {"tests": {"functional": "def check(f):\n    assert f(0) == 1\ncheck(inc)"}},
        {"tests": {"asserts": ["assert inc(1) == 2", "assert inc(0) == 0"], "setup": ""}},
    ]
    verdicts = CodeVerifier(timeout_s=5.0, workers=3).verify_batch(completions, references)
    assert [v.score for v in verdicts] == [1.0, 0.5, 0.0, 1.0, 0.5]
    assert [v.details["verdicts"] for v in verdicts] == [
        ["accepted"] * 2, ["accepted", "wrong_answer"], [], ["accepted"], ["wrong_answer", "accepted"],
    ]
    assert verdicts[2].details["reason"] == "no code found"
    assert CodeVerifier().verify_batch([], []) == []


def test_verify_batch_rejects_bad_references_before_running():
    with pytest.raises(ValueError, match="reference 1"):
        FAST.verify_batch([fenced("print(1)")] * 2, [{"tests": [{"input": "", "output": "1"}]}, {"tests": []}])
    with pytest.raises(ValueError, match="2 completions for 1 references"):
        FAST.verify_batch(["a", "b"], [{"tests": []}])


def test_pool_bounds_concurrent_sandboxes(monkeypatch):
    """All tests of all completions share one pool: never more than ``workers`` runs at once,
    also when several threads call the same verifier."""
    lock, running, peak = threading.Lock(), [0], [0]

    def fake_run(source, stdin, timeout_s, memory_mb):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return RunResult("1\n", "", 0, False, False, 0.02)

    monkeypatch.setattr(code_module, "run_program", fake_run)
    verifier = CodeVerifier(workers=3)
    references = [{"tests": [{"input": "", "output": "1"}] * 4}] * 10
    callers = [threading.Thread(target=lambda: verifier.verify_batch([fenced("print(1)")] * 10, references))
               for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert peak[0] == 3
    assert CodeVerifier().workers >= 1 and CodeVerifier(workers=5).workers == 5
    copy = pickle.loads(pickle.dumps(CodeVerifier(timeout_s=3.0, workers=5)))
    assert (copy.timeout_s, copy.workers) == (3.0, 5) and copy.verify(fenced("print(1)"), references[0]).passed


def test_pool_runs_in_parallel():
    """Sleeping programs (no CPU) overlap: 6 runs of 0.6 s on 4 workers take two rounds, not six."""
    start = time.monotonic()
    verdicts = CodeVerifier(timeout_s=5.0, workers=4).verify_batch(
        [fenced("import time\ntime.sleep(0.6)\nprint(1)")] * 6, [{"tests": [{"input": "", "output": "1"}]}] * 6
    )
    assert all(v.passed for v in verdicts)
    assert time.monotonic() - start < 6 * 0.6
