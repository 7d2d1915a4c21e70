"""Choice verifier: literal completions against ARC-style choices and MMLU-Pro-style options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from posttrain.data.loading import load_source
from posttrain.verifiers.base import get_verifier
from posttrain.verifiers.choice import ChoiceVerifier, option_labels

DATA = Path(os.environ.get("POSTTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

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
        ("Rubbing generates heat.\nA. dry palms", ARC, "A", True),
        ("Rubbing generates heat.\nB. wet palms", ARC, "B", False),
        ("Rubbing generates heat.\nA. wet palms", ARC, None, False),  # label and text disagree
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


# MMLU-Pro rows whose gold option cannot be named by its text, and why. Everything else must be.
TEXT_EXCEPTIONS = {
    # the text is itself a label: a boxed "E" means option E (label reading wins)
    **dict.fromkeys(["8057", "10400", "10549", "12149"], "option text reads as a label"),
    "10443": "two options have the same text '1'",
    "11573": "unbalanced braces in the option text ('Re{s)') end the box early",
    # LaTeX escapes broken in the source data: "\rho" stored as a line break plus "ho",
    # "\vert" as a vertical tab; a one-line answer cannot equal a multi-line option text
    **dict.fromkeys(
        ["4356", "10095", "10442", "10544", "11355", "11572", "11610", "11689", "11783", "12032"],
        "option text contains a line break or control character",
    ),
}


@pytest.mark.parametrize("source", ["mmlu_pro_stem", "arc_challenge_train", "arc_easy_train", "openbookqa_train"])
def test_real_rows_gold_forms_pass_and_wrong_label_fails(source):
    """Every row: the gold label boxed, as "answer is (X)" and as "Answer: X" passes, another
    label fails; the gold option's text (boxed, after "The answer is:", or as the last line)
    passes except for the listed MMLU-Pro rows."""
    verifier = ChoiceVerifier()
    records = load_source(source, DATA)
    text_failures = {}
    for record in records:
        reference = record.verifier_reference()
        gold = reference["answer"]
        texts = {c["label"]: c["text"] for c in reference["choices"]}
        assert source != "mmlu_pro_stem" or len(texts) <= 10
        for form in (rf"<think>maybe \boxed{{Z}}</think>\boxed{{{gold}}}", f"So the answer is ({gold}).",
                     f"Answer: {gold}"):  # fmt: skip
            assert verifier.verify(form, reference).passed, (record.id, form)
        wrong = next(label for label in texts if label != gold)
        assert not verifier.verify(f"The answer is ({wrong}).", reference).passed, record.id
        text = texts[gold]
        forms = (rf"\boxed{{{text}}}", f"The answer is: **{text}**", f"Reasoning first.\n{text}")
        if not all(verifier.verify(form, reference).passed for form in forms):
            text_failures[record.id.split("/", 1)[1]] = text
    expected = set(TEXT_EXCEPTIONS) if source == "mmlu_pro_stem" else set()
    assert set(text_failures) == expected, {k: text_failures.get(k) for k in set(text_failures) ^ expected}
