"""Choice verifier: literal completions against ARC-style choices and MMLU-Pro-style options."""

from __future__ import annotations

import pytest

from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.choice import ChoiceVerifier, option_labels

ARC = {
    "choices": [
        {"label": "A", "text": "dry palms"},
        {"label": "B", "text": "wet palms"},
        {"label": "C", "text": "palms covered with oil"},
        {"label": "D", "text": "palms covered with lotion"},
    ],
    "answer": "A",
}
ARC_DIGITS = {
    "choices": [{"label": str(i), "text": t} for i, t in enumerate(["red", "blue", "green"], 1)],
    "answer": "2",
}
MMLU_PRO = {"options": [f"option {i}" for i in range(10)], "answer": "J"}


@pytest.mark.parametrize(
    "completion, reference, extracted, passed",
    [
        (r"Friction is highest when dry. \boxed{A}", ARC, "A", True),
        (r"\boxed{a}", ARC, "A", True),
        (r"\boxed{(A)}", ARC, "A", True),
        (r"\boxed{\text{A}}", ARC, "A", True),
        (r"\boxed{A. dry palms}", ARC, "A", True),
        (r"\boxed{dry palms}", ARC, "A", True),
        (r"\boxed{B}", ARC, "B", False),
        (r"<think>maybe \boxed{B}</think> \boxed{A}", ARC, "A", True),
        (r"<think>maybe \boxed{A}</think> \boxed{B}", ARC, "B", False),
        ("The answer is (A).", ARC, "A", True),
        ("the answer is (a)", ARC, "A", True),
        ("The answer is C", ARC, "C", False),
        ("Answer: A", ARC, "A", True),
        ("The answer is (B). Wait, no: the answer is (A).", ARC, "A", True),
        ("The answer is a bit unclear.", ARC, None, False),
        ("Rubbing generates heat.\nDry palms", ARC, "A", True),
        ("Rubbing generates heat.\n(A)", ARC, "A", True),
        ("I am not sure.", ARC, None, False),
        (r"\boxed{E}", ARC, None, False),  # not a label of this question
        (r"\boxed{2}", ARC_DIGITS, "2", True),
        ("The answer is 3", ARC_DIGITS, "3", False),
        ("blue", ARC_DIGITS, "2", True),
        (r"\boxed{J}", MMLU_PRO, "J", True),
        ("The answer is (I).", MMLU_PRO, "I", False),
        (r"<think>cut off \boxed{J}", MMLU_PRO, None, False),
    ],
)
def test_verdicts(completion, reference, extracted, passed):
    verdict = ChoiceVerifier().verify(completion, reference)
    assert verdict.details["extracted"] == extracted
    assert (verdict.score, verdict.passed) == (float(passed), passed)
    if extracted is None:
        assert verdict.details["reason"] == "no answer found"


def test_option_labels():
    assert option_labels({"options": ["x", "y"]}) == {"A": "x", "B": "y"}
    assert option_labels({"choices": [{"label": "1", "text": "t"}]}) == {"1": "t"}
    assert "J" in option_labels({}) and "10" in option_labels({})


def test_gold_case_insensitive_and_registered():
    verdict = get_verifier("choice").verify(r"\boxed{B}", {**ARC, "answer": "b"})
    assert verdict.passed and verdict.details["gold"] == "B"


@pytest.mark.parametrize(
    "reference",
    [{**ARC, "answer": "Z"}, {"choices": ARC["choices"]}, {"choices": [{"label": "A"}], "answer": "A"}],
)
def test_bad_reference_raises(reference):
    with pytest.raises(ValueError):
        ChoiceVerifier().verify(r"\boxed{A}", reference)
