"""Math verifier: the final answer (last ``\\boxed{}`` after the reasoning block) against a gold answer.

Equivalence is decided by math-verify (sympy-based: ``\\frac{1}{2}`` = ``0.5``, ``025`` = ``25``,
``\\sqrt{2}/2`` = ``\\frac{\\sqrt2}{2}``). Only the extracted answer is parsed, never the raw
completion: math-verify's ``parse`` finds bare numbers in unboxed text (design.md §4).

math-verify times out with ``signal.alarm``, which only works on the main thread. On any other
thread we call it with the timeouts disabled (``parsing_timeout=None``, ``timeout_seconds=None``),
and guard against pathological inputs by a length cap on the extracted answer instead.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Mapping

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from posttrain.verifiers.base import Verdict, register_verifier

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The final answer is $x$." / "Answer: x" / "**Final Answer:** x" — the last one wins.
_ANSWER_LINE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:)\s*\**\s*:?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_EXTRACTION = [LatexExtractionConfig(), ExprExtractionConfig()]
# Longer answers are not worth a sympy parse without a timeout (off the main thread).
MAX_ANSWER_CHARS = 1000
MATH_TIMEOUT_S = 5


def after_reasoning(text: str) -> str | None:
    """Return the text after the last ``</think>``, or all of it when there is no reasoning block.

    Returns None when a ``<think>`` block was opened but never closed (a completion cut off while
    reasoning has no final answer).
    """
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def extract_boxed(text: str) -> str | None:
    """Return the contents of the last balanced ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Braces are matched with nesting (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); an
    unbalanced (truncated) box is skipped in favour of an earlier complete one. None if no
    complete box exists.
    """
    for match in reversed(list(_BOX_OPEN.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _strip_answer_line(answer: str) -> str:
    """Remove math delimiters, markdown emphasis and a trailing full stop from an answer line."""
    answer = answer.strip().strip("*").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.rstrip(".").endswith(right) and len(answer) > 1:
            answer = answer.rstrip(".")[len(left) : -len(right)]
            break
    return answer.strip().rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The answer a completion commits to: last box after the reasoning, else a final-answer line.

    Returns None when there is none (including a completion cut off inside ``<think>``).
    """
    text = after_reasoning(completion)
    if text is None:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    lines = _ANSWER_LINE.findall(text)
    if lines:
        answer = extract_boxed(lines[-1]) or _strip_answer_line(lines[-1])
        return answer or None
    return None


def _as_latex(answer: str) -> str:
    """Wrap an answer in ``$...$`` unless it already carries math delimiters or a box.

    An escaped dollar (``\\$18.90``, as in MATH golds) is not a delimiter.
    """
    answer = answer.strip()
    if _UNESCAPED_DOLLAR.search(answer) or "\\boxed" in answer or "\\(" in answer or "\\[" in answer:
        return answer
    return f"${answer}$"


def _normalise(answer: str) -> str:
    """A cheap canonical form for the exact-match fast path: no spaces, no ``$``."""
    return re.sub(r"\s+|\$", "", answer)


def answers_equivalent(gold: str, predicted: str) -> bool:
    """True if ``predicted`` equals ``gold`` as mathematics (math-verify), or as normalised text.

    Safe on any thread: off the main thread math-verify runs with its signal timeouts disabled.
    """
    if _normalise(gold) == _normalise(predicted) and _normalise(gold):
        return True
    if len(predicted) > MAX_ANSWER_CHARS:
        return False
    on_main = threading.current_thread() is threading.main_thread()
    limit = MATH_TIMEOUT_S if on_main else None
    gold_parsed = parse(_as_latex(gold), extraction_config=_EXTRACTION, parsing_timeout=limit)
    pred_parsed = parse(_as_latex(predicted), extraction_config=_EXTRACTION, parsing_timeout=limit)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


@register_verifier("math")
class MathVerifier:
    """Final-answer check for math problems: reference ``answer`` (a string, LaTeX allowed)."""

    name = "math"
    reference_fields = ("answer",)

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion`` against ``reference["answer"]``.

        Returns score 1.0/0.0 and details ``{"extracted", "gold", "reason"}``; reason is one of
        "correct", "wrong answer", "no answer found".

        Raises:
            ValueError: if the reference has no non-empty string ``answer``.
        """
        gold = reference.get("answer")
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError(f"math reference needs a non-empty string 'answer', got {gold!r}")
        extracted = extract_answer(completion)
        if extracted is None:
            return Verdict(0.0, False, {"extracted": None, "gold": gold, "reason": "no answer found"})
        ok = answers_equivalent(gold, extracted)
        reason = "correct" if ok else "wrong answer"
        return Verdict(float(ok), ok, {"extracted": extracted, "gold": gold, "reason": reason})
