"""Math verifier: literal completions, real benchmark gold answers, off-main-thread use."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.math import MathVerifier, extract_answer, extract_boxed

DATA = Path(os.environ.get("POSTTRAIN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _jsonl(name: str, limit: int) -> list[dict]:
    with open(DATA / "benchmarks" / name, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}", "5"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\fbox{42}", "42"),
        (r"\boxed {7}", "7"),
        (r"\boxed{2} and a cut-off \boxed{\frac{1}{", "2"),
        ("no box here", None),
        (r"\boxed{", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        (r"<think>try \boxed{1}</think>The answer is \boxed{2}.", "2"),
        (r"<think>reasoning cut off \boxed{1}", None),
        ("The final answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("Work...\nAnswer: 17", "17"),
        ("**Final Answer:** 3", "3"),
        ("The value is 42 and then 43.", None),  # math-verify would find 43 in raw text
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, gold, passed",
    [
        (r"\boxed{025}", "25", True),
        (r"\boxed{25}", "025", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{\frac{\sqrt2}{2}}", r"\sqrt{2}/2", True),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
        (r"\boxed{90}", r"90^\circ", True),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
        (r"\boxed{6-5i}", "6 - 5i", True),
        (r"\boxed{5}", "x=5", True),
        (r"\boxed{1,000}", "1000", True),
        (r"\boxed{18.90}", r"\$18.90", True),  # MATH gold with an escaped dollar
        (r"\boxed{32348}", r"\$32,\!348", True),
        (r"\boxed{71}", "70", False),
        (r"\boxed{\frac{1}{3}}", "0.5", False),
        (r"<think>\boxed{70}</think> so \boxed{71}", "70", False),
        ("The answer is $70$.", "70", True),
    ],
)
def test_verdicts(completion, gold, passed):
    verdict = MathVerifier().verify(completion, {"answer": gold})
    assert verdict.passed is passed
    assert verdict.score == float(passed)
    assert verdict.details["gold"] == gold
    assert verdict.details["reason"] == ("correct" if passed else "wrong answer")


def test_no_answer_found():
    verdict = get_verifier("math").verify("I think it is 42.", {"answer": "42"})
    assert (verdict.score, verdict.passed) == (0.0, False)
    assert verdict.details == {"extracted": None, "gold": "42", "reason": "no answer found"}


def test_missing_gold_raises():
    with pytest.raises(ValueError, match="answer"):
        MathVerifier().verify(r"\boxed{1}", {})


@pytest.mark.parametrize("name, limit", [("aime2025.jsonl", 30), ("math500.jsonl", 20)])
def test_real_gold_answers_verify_against_themselves(name, limit):
    verifier = MathVerifier()
    for row in _jsonl(name, limit):
        gold = row["answer"]
        right = verifier.verify(f"<think>work</think>So the answer is $\\boxed{{{gold}}}$.", {"answer": gold})
        assert right.passed, (row.get("id") or row.get("unique_id"), right.details)
        wrong = verifier.verify(r"\boxed{123456789}", {"answer": gold})
        assert not wrong.passed, (gold, wrong.details)


def test_aime_leading_zeros():
    verifier = MathVerifier()
    for row in _jsonl("aime2025.jsonl", 30):
        padded = f"{int(row['answer']):03d}"
        assert verifier.verify(rf"\boxed{{{padded}}}", {"answer": row["answer"]}).passed
        assert not verifier.verify(rf"\boxed{{{int(row['answer']) + 1}}}", {"answer": row["answer"]}).passed


def test_verify_off_the_main_thread():
    verifier = MathVerifier()
    cases = [
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt2}{2}", True),
        (r"\boxed{3}", "4", False),
    ]
    results: list = []
    errors: list = []

    def work():
        try:
            results.extend(verifier.verify(c, {"answer": g}).passed for c, g, _ in cases)
        except Exception as e:  # surfaced in the main thread below
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors, errors
    assert results == [p for _, _, p in cases]
