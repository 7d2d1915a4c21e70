"""Synthetic digits verifier: hand-computed scores for literal completions."""

from __future__ import annotations

import random

import pytest

from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.synthetic import SyntheticDigitsVerifier, digit_overlap


@pytest.mark.parametrize(
    "completion, answer, score, passed",
    [
        ("1234", "1234", 1.0, True),
        ("  1234 and more", "1234", 1.0, True),
        ("<think>9999</think>1234", "1234", 1.0, True),
        ("4321", "1234", 1.0, False),  # all digits present, wrong order
        ("1 2 x x", "1234", 0.5, False),  # window "12xx": two of four digits
        ("xxxxxxxx1234", "1234", 0.0, False),  # digits outside the 8-character window
        ("1111", "1123", 0.5, False),  # multiset: only two 1s count
        ("12", "1234", 0.5, False),
        ("", "1234", 0.0, False),
        ("<think>1234", "1234", 0.0, False),  # cut off while reasoning
        ("7", "7", 1.0, True),
    ],
)
def test_verdicts(completion, answer, score, passed):
    verdict = SyntheticDigitsVerifier().verify(completion, {"answer": answer})
    assert verdict.score == pytest.approx(score)
    assert verdict.passed is passed


def test_score_varies_across_random_completions():
    rng = random.Random(0)
    scores = {digit_overlap("".join(rng.choices("0123456789 ", k=12)), "40719") for _ in range(50)}
    assert len(scores) >= 3 and all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("answer", ["", "12a", None, "²"])
def test_bad_answer_raises(answer):
    with pytest.raises(ValueError):
        get_verifier("synthetic_digits").verify("123", {"answer": answer})
