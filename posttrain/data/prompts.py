"""Prompt templates (the user turn) and reference-solution formats (the SFT assistant target).

Every record's ``prompt`` is built here, so the wording lives in one place. Solutions are
formatted the way the verifiers read completions: math ends with ``\\boxed{answer}``, code is
one fenced ``python`` block, multiple choice ends with ``\\boxed{label}``.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from posttrain.records import Choice

# design.md §1.5: the published evaluation scripts append this to the problem, one user turn.
MATH_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."
CHOICE_SUFFIX = "Answer with the letter of the correct option within \\boxed{}."
# ARC has rows labelled 1-4: "letter" would misdirect there.
CHOICE_SUFFIX_NUMBERED = "Answer with the number of the correct option within \\boxed{}."
CODE_STDIO_SUFFIX = (
    "Write a Python 3 program that reads from standard input and writes to standard output. "
    "Put the complete program in one ```python code block."
)
CODE_FUNCTIONAL_SUFFIX = "Put the complete solution in one ```python code block."
STARTER_INTRO = "Use this starter code:"
TESTS_INTRO = "Your code should pass these tests:"
DIGITS_TEMPLATE = "Repeat the digits: {digits}"


def math_prompt(problem: str) -> str:
    """The math user turn: ``problem + "\\n\\n" + MATH_SUFFIX`` (design.md §1.5)."""
    return f"{problem.strip()}\n\n{MATH_SUFFIX}"


def choice_prompt(question: str, choices: Sequence[Choice]) -> str:
    """The multiple-choice user turn: question, one ``"A. text"`` line per option, instruction.

    Options keep their data labels; all-digit labels (some ARC rows) get the "number" wording.
    """
    options = "\n".join(f"{c.label}. {c.text.strip()}" for c in choices)
    numbered = all(c.label.isdigit() for c in choices)
    suffix = CHOICE_SUFFIX_NUMBERED if numbered else CHOICE_SUFFIX
    return f"{question.strip()}\n\n{options}\n\n{suffix}"


def code_stdio_prompt(statement: str) -> str:
    """The stdin/stdout code user turn: ``statement + "\\n\\n" + CODE_STDIO_SUFFIX``."""
    return f"{statement.strip()}\n\n{CODE_STDIO_SUFFIX}"


def code_functional_prompt(statement: str, starter: str | None = None, intro: str = STARTER_INTRO) -> str:
    """The function-completion code user turn: statement, optional starter code, instruction.

    ``starter`` (a signature, starter class or example asserts) is shown in a ``python`` fence
    after ``intro`` (``STARTER_INTRO``, or ``TESTS_INTRO`` for MBPP's asserts).
    """
    parts = [statement.strip()]
    if starter and starter.strip():
        parts.append(f"{intro}\n{python_block(starter)}")
    parts.append(CODE_FUNCTIONAL_SUFFIX)
    return "\n\n".join(parts)


def digits_prompt(digits: Sequence[int]) -> str:
    """The synthetic task's user turn, e.g. ``"Repeat the digits: 3 9 1 4"``."""
    return DIGITS_TEMPLATE.format(digits=" ".join(str(d) for d in digits))


def raw_prompt(problem: str) -> str:
    """The problem text unchanged (stripped): for prompts that already carry their instructions."""
    return problem.strip()


# Templates a hub mapping (``HubMapping.template``) may name.
NAMED_TEMPLATES: dict[str, Callable[[str], str]] = {
    "math": math_prompt,
    "code_stdio": code_stdio_prompt,
    "code_functional": code_functional_prompt,
    "raw": raw_prompt,
}


# ---------------------------------------------------------------- reference solutions


def python_block(code: str) -> str:
    """``code`` in one fenced ``python`` block (Windows line ends normalised)."""
    body = code.replace("\r\n", "\n").strip("\n")
    return f"```python\n{body}\n```"


def code_solution(code: str) -> str:
    """A code SFT target: the reference program in one ``python`` block (what the verifier runs)."""
    return python_block(code)


def choice_solution(label: str, text: str) -> str:
    """A multiple-choice SFT target: a short sentence ending with ``\\boxed{label}``."""
    return f"The correct option is {label}: {text.strip().rstrip('.')}. The answer is \\boxed{{{label}}}"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) in ``text``; None if absent or unbalanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i in range(start + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + len("\\boxed{") : i]
    return None


def _same_answer(a: str, b: str) -> bool:
    a, b = "".join(a.split()), "".join(b.split())
    if a.isascii() and a.isdigit() and b.isascii() and b.isdigit():  # AIME writes "015" for 15
        return (a.lstrip("0") or "0") == (b.lstrip("0") or "0")  # as text: int() refuses 4300+ digits
    return a == b


_SIGNATURE = re.compile(r"(\n[ \t]*~[^\n]*)+\s*$")  # AoPS wiki credits: "\n ~name" lines at the end
_UNBRACED_BOX = re.compile(r"\\boxed\s+([^\s${}]+)")  # old MATH style "\boxed 9"


def math_solution(solution: str, answer: str) -> str:
    """A math SFT target: the worked solution, made to end with ``\\boxed{answer}``.

    Trailing AoPS credit lines (``~user``) are dropped; ``\\boxed 9`` becomes ``\\boxed{9}``.
    If the last boxed expression is not the reference answer (none, unbalanced,
    ``\\textbf{(051)}``), ``The final answer is \\boxed{answer}.`` is appended so the math
    verifier reads ``answer``.
    """
    text = _SIGNATURE.sub("", solution.replace("\r\n", "\n")).strip()
    text = _UNBRACED_BOX.sub(lambda m: f"\\boxed{{{m.group(1)}}}", text)
    boxed = last_boxed(text)
    if boxed is None or not _same_answer(boxed, answer):
        text = f"{text}\n\nThe final answer is \\boxed{{{answer}}}."
    return text


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def gsm8k_solution(answer_text: str) -> tuple[str, str] | None:
    """Split a GSM8K ``answer`` field into (SFT solution, final answer); None without ``####``.

    Calculator annotations ``<<48/2=24>>`` are removed; the ``#### 1,080`` line becomes
    ``The final answer is \\boxed{1080}.`` (thousands separators dropped from the answer).
    """
    reasoning, sep, final = answer_text.rpartition("####")
    final = final.strip().replace(",", "")
    if not sep or not final:
        return None
    steps = _CALCULATOR.sub("", reasoning).strip()
    return f"{steps}\nThe final answer is \\boxed{{{final}}}.", final
