"""Code verifier: run the completion's program against the reference tests in a sandbox.

Reference ``tests`` shapes (design.md §3):
- ``[{input, output, checker?}, ...]`` — stdin/stdout pairs (Codeforces, Code Jam);
- ``{inputs: [...], outputs: [...]}`` — the same, column-wise (CodeContests);
- ``{functional: program, setup?}`` — setup, candidate code, then ``program``, which defines and calls
  ``check(...)`` (LeetCode; HumanEval as its ``test`` plus ``check(entry_point)``); one test;
- ``{asserts: [...], setup: "..."}`` — candidate code, setup, then one assert per test (MBPP).
Output comparison: whitespace-normalised lines by default; ``checker: "float_tolerance EPS"``
compares tokens, numbers within absolute or relative error EPS (the Code Jam validator's rule).

Score = fraction of tests accepted; passed = all accepted. Per-test verdicts: accepted,
wrong_answer, time_limit, memory_limit, runtime_error.
"""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.math import after_reasoning
from posttrain.verifiers.sandbox import RunResult, run_program

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_DETAIL_CHARS = 500


@dataclass(frozen=True)
class CodeCase:
    """One program run: ``source`` fed ``stdin``; ``expected`` None means "exit 0 is a pass"."""

    source: str
    stdin: str = ""
    expected: str | None = None
    checker: str | None = None


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
        return [CodeCase(f"{tests.get('setup') or ''}\n{code}\n\n{tests['functional']}\n")]
    if isinstance(tests, Mapping) and "asserts" in tests:
        setup = tests.get("setup") or ""
        # Setup runs after the candidate: MBPP's only setups (tasks 367, 927) build trees
        # from the solution's own Node class.
        return [CodeCase(f"{code}\n\n{setup}\n{a}\n") for a in tests["asserts"]]
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


def classify(result: RunResult, case: CodeCase) -> str:
    """Per-test verdict: accepted, wrong_answer, time_limit, memory_limit or runtime_error."""
    if result.timed_out:
        return "time_limit"
    if result.memory_exceeded:
        return "memory_limit"
    if result.returncode != 0:
        return "runtime_error"
    if result.output_truncated:
        return "wrong_answer"
    if case.expected is None or outputs_match(result.stdout, case.expected, case.checker):
        return "accepted"
    return "wrong_answer"


@register_verifier("code")
class CodeVerifier:
    """Runs the completion's last code block against reference ``tests`` (see module docstring).

    Options: ``timeout_s`` wall-clock seconds per test, ``memory_mb`` address-space cap per test,
    ``max_tests`` (None = all) and ``parallel`` (threads running one completion's tests).
    """

    name = "code"
    reference_fields = ("tests",)

    def __init__(
        self, timeout_s: float = 5.0, memory_mb: int = 2048, max_tests: int | None = None, parallel: int = 2
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_tests = max_tests
        self.parallel = parallel

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion`` against ``reference["tests"]``.

        Details: ``verdicts`` (one per test run), ``n_passed``, ``n_tests``, ``reason``, and for
        the first failing test its ``stdout``/``stderr`` (first 500 characters).

        Raises:
            ValueError: if ``tests`` is missing or malformed.
        """
        code = extract_code(completion)
        if code is None:
            return Verdict(0.0, False, {"reason": "no code found", "verdicts": []})
        cases = build_cases(code, reference.get("tests"))[: self.max_tests]
        if not cases:
            raise ValueError("code reference 'tests' is empty")
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(cases)))) as pool:
            results = list(pool.map(self._run, cases))
        verdicts = [classify(r, c) for r, c in zip(results, cases)]
        n_passed = verdicts.count("accepted")
        details: dict[str, Any] = {"verdicts": verdicts, "n_passed": n_passed, "n_tests": len(cases)}
        failed = [r for r, v in zip(results, verdicts) if v != "accepted"]
        details["reason"] = "all tests passed" if not failed else next(v for v in verdicts if v != "accepted")
        if failed:
            details["stdout"] = failed[0].stdout[:_DETAIL_CHARS]
            details["stderr"] = failed[0].stderr[-_DETAIL_CHARS:]
        return Verdict(n_passed / len(cases), not failed, details)

    def _run(self, case: CodeCase) -> RunResult:
        """Run one case under this verifier's limits."""
        return run_program(case.source, case.stdin, self.timeout_s, self.memory_mb)
