"""Code verifier: run the completion's program against the reference tests in a sandbox.

Reference ``tests`` shapes (design.md §3):
- ``[{input, output, checker?}, ...]`` — stdin/stdout pairs (Codeforces, Code Jam);
- ``{inputs: [...], outputs: [...]}`` — the same, column-wise (CodeContests);
- ``{functional: program, setup?}`` — setup, candidate code, then ``program``, which defines and calls
  ``check(...)`` (LeetCode; HumanEval as its ``test`` plus ``check(entry_point)``); one test;
- ``{asserts: [...], setup: "..."}`` — candidate code, setup, then one assert per test (MBPP).
Output comparison: whitespace-normalised lines by default; ``checker: "float_tolerance EPS"``
compares tokens, numbers within absolute or relative error EPS (the Code Jam validator's rule).

Score = fraction of tests accepted; passed = all accepted. Per-test verdicts (``classify``):
``accepted``, ``wrong_answer`` (output differs, passed the output cap, or a functional or
assert test failed its assertion), ``time_limit``
(wall clock or CPU rlimit), ``memory_limit`` (the address-space cap refused an allocation, or
the kernel killed the program), ``runtime_error`` (an exception, a nonzero exit, or an exit
before the tests finished).

Early exits: in the functional and assert shapes a pass is an exit status of 0, which a
candidate could fake with ``sys.exit(0)`` or ``os._exit(0)`` before the tests run. So those
programs read a random token from stdin first and write it to fd 1 after the last test; a run
is accepted only if its output has the token on a line of its own. (The token is in the
program's own source and globals, so a program that looks for it can still print it: this
stops the cheap exit, not a determined adversary.)

Parallelism: ``CodeVerifier.verify_batch`` grades many completions at once, running all their
tests in one pool of at most ``workers`` concurrent sandboxes (default: one per core); the
sandboxed subprocesses do the work, so threads suffice.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.math import after_reasoning
from posttrain.verifiers.sandbox import RunResult, run_program

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_DETAIL_CHARS = 500
_FUTURE = re.compile(r"^from __future__ import [^\n]*\n?", re.MULTILINE)
_TOKEN_PREAMBLE = "import os as _pt_os, sys as _pt_sys\n_pt_token = _pt_sys.stdin.readline().strip()\n"
# Flush what the program printed first, then write the token on a line of its own to fd 1
# (bypassing a sys.stdout the candidate may have replaced).
_TOKEN_EPILOGUE = (
    "\ntry:\n    _pt_sys.stdout.flush()\nexcept Exception:\n    pass\n"
    "_pt_os.write(1, ('\\n' + _pt_token + '\\n').encode())\n"
)


@dataclass(frozen=True)
class CodeCase:
    """One program run: ``source`` fed ``stdin``, its stdout compared with ``expected``.

    ``expected`` None means "exit 0 is a pass" (functional and assert tests); such a case
    carries a ``token`` the program writes on a line of its own after its last test (module
    docstring), which stdout must contain.
    """

    source: str
    stdin: str = ""
    expected: str | None = None
    checker: str | None = None
    token: str | None = None


def _exit_status_case(program: str) -> CodeCase:
    """A case passed by exit status 0, guarded by a fresh completion token.

    ``from __future__`` imports move to the top, where Python requires them.
    """
    token = secrets.token_hex(16)
    futures = "".join(line.rstrip("\n") + "\n" for line in _FUTURE.findall(program))
    source = f"{futures}{_TOKEN_PREAMBLE}{_FUTURE.sub('', program)}{_TOKEN_EPILOGUE}"
    return CodeCase(source, stdin=token + "\n", token=token)


def extract_code(completion: str) -> str | None:
    """The program in a completion: its last fenced Python (or untagged) block after the reasoning.

    Falls back to the last fenced block of any language, then to the whole answer text if it
    parses as Python. None if there is no code.
    """
    text = after_reasoning(completion)
    if text is None:
        return None
    blocks = _FENCE.findall(text)
    python = [body for tag, body in blocks if tag.lower() in _PYTHON_TAGS]
    if python or blocks:
        return (python or [body for _, body in blocks])[-1]
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return text if text.strip() else None


def build_cases(code: str, tests: Any) -> list[CodeCase]:
    """Turn a reference ``tests`` value (any of the four shapes) into runnable cases.

    One case per stdin/stdout pair or assert; one case for a functional program. Functional
    and assert cases get a random completion token each call (module docstring).

    Raises:
        ValueError: if ``tests`` has none of the known shapes.
    """
    if isinstance(tests, list) and all(isinstance(t, Mapping) and "input" in t for t in tests):
        return [CodeCase(code, _text(t["input"]), _text(t["output"]), t.get("checker")) for t in tests]
    if isinstance(tests, Mapping) and "inputs" in tests and "outputs" in tests:
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError("code tests: 'inputs' and 'outputs' differ in length")
        checker = tests.get("checker")
        pairs = zip(tests["inputs"], tests["outputs"])
        return [CodeCase(code, _text(i), _text(o), checker) for i, o in pairs]
    if isinstance(tests, Mapping) and "functional" in tests:
        # ``setup`` (imports, ListNode/TreeNode for LeetCode) must run before the candidate's code.
        return [_exit_status_case(f"{tests.get('setup') or ''}\n{code}\n\n{tests['functional']}\n")]
    if isinstance(tests, Mapping) and "asserts" in tests:
        setup = tests.get("setup") or ""
        # Setup runs after the candidate: MBPP's only setups (tasks 367, 927) build trees
        # from the solution's own Node class.
        return [_exit_status_case(f"{code}\n\n{setup}\n{a}\n") for a in tests["asserts"]]
    raise ValueError(
        "code reference 'tests' must be a list of {input, output}, {inputs, outputs}, "
        f"{{functional}} or {{asserts, setup}}; got {type(tests).__name__}"
    )


def _text(value: Any) -> str:
    """Test data as text (some datasets store numbers or lists of lines)."""
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return value if isinstance(value, str) else str(value)


def _lines(text: str) -> list[str]:
    """Whitespace-normalised lines, without leading or trailing blank lines."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _tokens_close(got: str, want: str, eps: float) -> bool:
    """Tokens equal as text, or both numbers within absolute or relative error ``eps``."""
    if got == want:
        return True
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    return abs(a - b) <= eps * max(1.0, abs(b))


def outputs_match(got: str, want: str, checker: str | None = None) -> bool:
    """Compare program output with the expected output under ``checker``.

    ``None``: whitespace-normalised lines must be equal. ``"float_tolerance EPS"``: the token
    lists must align, numeric tokens within ``EPS`` (absolute or relative), others equal.

    Raises:
        ValueError: for an unknown checker.
    """
    if not checker:
        return _lines(got) == _lines(want)
    name, _, arg = checker.partition(" ")
    if name != "float_tolerance":
        raise ValueError(f"unknown output checker {checker!r}")
    got_tokens, want_tokens = got.split(), want.split()
    eps = float(arg)
    return len(got_tokens) == len(want_tokens) and all(
        _tokens_close(g, w, eps) for g, w in zip(got_tokens, want_tokens)
    )


@dataclass(frozen=True)
class _Outcome:
    """One classified run, with the ends of its output for the details."""

    verdict: str
    wall_s: float
    stdout_head: str
    stderr_tail: str


def classify(result: RunResult, case: CodeCase) -> str:
    """Per-test verdict: accepted, wrong_answer, time_limit, memory_limit or runtime_error.

    Precedence: time limit (wall clock or CPU), output over the cap (wrong answer), memory,
    nonzero exit or signal (runtime error; but for functional and assert tests a failed
    assertion, the test's way to say "wrong result", is a wrong answer), then the output: for a
    token case a missing token means an exit before the tests finished (runtime error);
    otherwise ``outputs_match``.
    """
    if result.timed_out:
        return "time_limit"
    if result.output_truncated:
        return "wrong_answer"
    if result.memory_exceeded:
        return "memory_limit"
    if result.returncode != 0:
        failed_assert = case.token is not None and _last_line(result.stderr).startswith("AssertionError")
        return "wrong_answer" if failed_assert else "runtime_error"
    if case.token is not None:
        return "accepted" if case.token in result.stdout.splitlines() else "runtime_error"
    if case.expected is None or outputs_match(result.stdout, case.expected, case.checker):
        return "accepted"
    return "wrong_answer"


def _last_line(text: str) -> str:
    """The last non-blank line of ``text`` (a traceback's exception line), stripped."""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


@register_verifier("code")
class CodeVerifier:
    """Runs the completion's last code block against reference ``tests`` (see module docstring).

    Options: ``timeout_s`` wall-clock seconds per test (the CPU rlimit is ``ceil(timeout_s) + 1``),
    ``memory_mb`` address-space cap per test (MiB), ``max_tests`` (None = all; the first ones),
    ``workers`` the most sandboxes this verifier runs at once, across all threads calling it
    (None = the cores this process may use).
    """

    name = "code"
    reference_fields = ("tests",)

    def __init__(
        self, timeout_s: float = 5.0, memory_mb: int = 2048, max_tests: int | None = None, workers: int | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_tests = max_tests
        self.workers = max(1, workers or _cpu_count())
        self._slots = threading.BoundedSemaphore(self.workers)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. to a worker process): the slots are per process, made anew there."""
        return {k: v for k, v in self.__dict__.items() if k != "_slots"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slots = threading.BoundedSemaphore(self.workers)

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion`` against ``reference["tests"]``; its tests run in parallel.

        Details: ``verdicts`` and ``wall_s`` (one per test run, in test order; seconds),
        ``n_passed``, ``n_tests``, ``reason`` ("all tests passed", "no code found" or the first
        failing verdict), and for the first failing test its ``stdout`` (first 500 characters)
        and ``stderr`` (last 500).

        Raises:
            ValueError: if ``tests`` is missing, empty or malformed.
        """
        return self.verify_batch([completion], [reference])[0]

    def verify_batch(
        self, completions: Sequence[str], references: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """Grade ``completions[i]`` against ``references[i]``; returns verdicts in the same order.

        All tests of all completions share one pool of at most ``workers`` concurrent sandboxes,
        so a batch of ``[batch * group_size]`` RL completions, or an evaluation's samples, keeps
        every core busy. Each verdict is as from :meth:`verify`.

        Raises:
            ValueError: if the lengths differ, or a reference's ``tests`` is missing, empty or
                malformed (naming its index); nothing is run then.
        """
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions for {len(references)} references")
        plans = [self._cases(i, c, r) for i, (c, r) in enumerate(zip(completions, references))]
        flat = [case for cases in plans if cases for case in cases]
        outcomes = iter(self._run_all(flat))
        verdicts = []
        for cases in plans:
            if cases is None:
                verdicts.append(Verdict(0.0, False, {"reason": "no code found", "verdicts": []}))
            else:
                verdicts.append(_verdict([next(outcomes) for _ in cases]))
        return verdicts

    def _cases(self, index: int, completion: str, reference: Mapping[str, Any]) -> list[CodeCase] | None:
        """The cases to run for one completion; None if it has no code.

        Raises:
            ValueError: for missing, empty or malformed ``tests``, naming ``index``.
        """
        try:
            tests = reference.get("tests")
            if tests is None:
                raise ValueError("code reference has no 'tests'")
            code = extract_code(completion)
            cases = build_cases(code or "", tests)[: self.max_tests]
            if not cases:
                raise ValueError("code reference 'tests' is empty")
        except ValueError as e:
            raise ValueError(f"reference {index}: {e}") from None
        return cases if code is not None else None

    def _run_all(self, cases: list[CodeCase]) -> list[_Outcome]:
        """Run ``cases`` with at most ``workers`` at once; outcomes in the same order."""
        if len(cases) <= 1:
            return [self._run(c) for c in cases]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(cases))) as pool:
            return list(pool.map(self._run, cases))

    def _run(self, case: CodeCase) -> _Outcome:
        """Run and classify one case under this verifier's limits, holding one of its slots.

        Only the ends of the output are kept, so a large batch holds little memory.
        """
        with self._slots:
            result = run_program(case.source, case.stdin, self.timeout_s, self.memory_mb)
        return _Outcome(classify(result, case), result.wall_s, result.stdout[:_DETAIL_CHARS],
                        result.stderr[-_DETAIL_CHARS:])


def _cpu_count() -> int:
    """Cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _verdict(outcomes: list[_Outcome]) -> Verdict:
    """Aggregate one completion's per-test outcomes: score = fraction accepted."""
    verdicts = [o.verdict for o in outcomes]
    n_passed = verdicts.count("accepted")
    details: dict[str, Any] = {
        "verdicts": verdicts, "n_passed": n_passed, "n_tests": len(outcomes),
        "wall_s": [round(o.wall_s, 3) for o in outcomes],
    }
    failed = [o for o in outcomes if o.verdict != "accepted"]
    details["reason"] = failed[0].verdict if failed else "all tests passed"
    if failed:
        details["stdout"], details["stderr"] = failed[0].stdout_head, failed[0].stderr_tail
    return Verdict(n_passed / len(outcomes), not failed, details)
