"""Tests of the `instruct` verifier and its IFEval checkers: tables of literal responses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from posttrain.verifiers.ifeval_checks import (
    CHECKERS,
    IFEVAL_INSTRUCTIONS,
    UnsupportedInstruction,
    check_loose,
    check_strict,
    count_sentences,
    loose_variants,
    split_sentences,
    supported_instructions,
)
from posttrain.verifiers.instruct import InstructVerifier, strip_reasoning

DATA = Path(
    os.environ.get("POSTTRAIN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)

# (instruction id, kwargs, compliant response, violating response)
# fmt: off
CASES = [
    ("keywords:existence", {"keywords": ["apple", "banana"]},
     "I like Apples and bananas.", "I like apples."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "The cat saw another cat.", "The cat slept."),
    ("keywords:frequency", {"keyword": "very", "frequency": 2, "relation": "less than"},
     "It is very good.", "It is very very good."),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]},
     "This is badly drawn but fine.", "That is UGLY."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zany zebras buzz.", "A lazy dog."),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 2, "let_relation": "less than"},
     "A cat.", "Bee."),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"},
     "#one #two", "#one"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Four words right here.", "One two three four five."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "don't stop now", "hi there"),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith arrived. He sat down! Was he tired?", "Mr. Smith arrived. He sat down."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "One line\nand another line", "First. Second."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "First part.\n***\nSecond part.", "First.\n***\n\n***\nSecond."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Summit"},
     "Intro here.\n\n\"Summit, the peak.\"", "Intro here.\n\nPeak summit."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], see you at [place].", "Dear [name], see you there."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello.\np. s. see you", "Hello. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hi.\nP.P.S. bring cake", "Hi.\nP.S. bring cake"),
    ("detectable_content:postscript", {"postscript_marker": "Note:"},
     "Hi.\n  NOTE: late", "Hi. No note here."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "List:\n* one\n- two", "List:\n* one\n* two\n* three"),
    ("detectable_format:constrained_response", {},
     "My answer is maybe.", "My answer is perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*first* and *second*", "*first* and ** and *\nsecond*"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nalpha\nSection 2\nbeta", "SECTION 1\nalpha\nSECTION 2\nbeta"),
    ("detectable_format:json_format", {},
     "```json\n{\"a\": 1}\n```", "Here: {\"a\": 1}"),
    ("detectable_format:title", {},
     "<<Poem of Joy>>\nLa la.", "<< >>\nLa la."),
    ("combination:two_responses", {},
     "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku."},
     "  write a HAIKU. Leaves fall softly.", "Sure! Write a haiku."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Done. any other questions?\"", "Any other questions? Bye."),
    ("startend:quotation", {},
     "  \"Wrapped.\"  ", "\"Not wrapped."),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "NASA and the WELL-KNOWN ESA met.", "NASA met the Well-Known esa."),
    ("change_case:capital_word_frequency",
     {"capital_frequency": 2, "capital_relation": "less than"},
     "Only NASA here.", "I think NASA here."),
    ("change_case:capital_word_frequency", {"capital_frequency": 4, "capital_relation": "at least"},
     "DON'T PANIC, **NOW**", "P.S. **NOW** U.S.A."),
    ("change_case:english_capital", {},
     "THIS IS ALL IN CAPITAL LETTERS, 100%.", "THIS IS Mostly capitals."),
    ("change_case:english_lowercase", {},
     "this response is written in lowercase only.", "this response has One capital."),
    ("punctuation:no_comma", {},
     "No commas at all here.", "One, two."),
]
# fmt: on


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES)
def test_checker_table(instruction_id, kwargs, good, bad):
    assert check_strict(instruction_id, good, "", kwargs) is True
    assert check_strict(instruction_id, bad, "", kwargs) is False


def test_every_supported_instruction_has_a_case():
    covered = {case[0] for case in CASES}
    assert supported_instructions() - {"language:response_language"} <= covered
    assert supported_instructions() <= IFEVAL_INSTRUCTIONS


# Expected counts are what NLTK's English Punkt model (the reference's splitter) gives.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world.", 1),
        ("", 0),
        ("Dr. Smith met Mr. Jones. They talked.", 2),
        ("J. R. R. Tolkien wrote books.", 1),
        ("We met John F. Kennedy. Nice.", 2),
        ("It happened in 2020. Then it ended.", 2),
        ("Version 2. next up.", 1),
        ('He said "Stop." Then he left.', 2),
        ("Wait... what? No!", 2),
        ("Wait... The end.", 2),
        ("Pay 3.50 dollars, e.g. now.", 2),  # "e.g" is not on Punkt's abbreviation list
        ("I saw the U.S. The end.", 2),
        ("It costs 5 p.m. tomorrow. Fine.", 2),
        ("1. Buy milk.\n2. Buy eggs.", 4),  # Punkt splits line-leading list numbers off
        ("**Title.** Body text here.", 2),
        ("no punctuation\nat all", 1),
    ],
)
def test_sentence_splitter(text, expected):
    assert count_sentences(text) == expected, split_sentences(text)


def test_loose_variants_follow_ifeval_order():
    expected = ["a\n*b*\nc", "a\nb\nc", "*b*\nc", "a\n*b*", "*b*", "b\nc", "a\nb", "b"]
    assert loose_variants("a\n*b*\nc") == expected


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "response"),
    [
        ("detectable_format:json_format", {}, 'Sure, here is the JSON:\n{"a": 1}'),
        ("startend:end_checker", {"end_phrase": "Bye."}, "Hello.\nBye.\nI hope this helps!"),
        ("punctuation:no_comma", {}, "Okay, here goes:\nNo commas here"),
        ("detectable_format:title", {}, "Intro\n<<*Title*>>"),  # passes strictly too
        ("startend:quotation", {}, '**"Quoted"**'),
    ],
)
def test_loose_accepts_what_strict_may_reject(instruction_id, kwargs, response):
    assert check_loose(instruction_id, response, "", kwargs) is True
    if instruction_id != "detectable_format:title":
        assert check_strict(instruction_id, response, "", kwargs) is False


def test_blank_response_follows_nothing():
    assert check_strict("punctuation:no_comma", "  \n", "", {}) is False
    assert check_loose("punctuation:no_comma", "  \n", "", {}) is False


def test_unknown_id_and_bad_kwargs_raise():
    with pytest.raises(UnsupportedInstruction):
        check_strict("keywords:nonexistent", "text", "", {})
    with pytest.raises(TypeError):
        check_strict("length_constraints:number_words", "text", "", {"num_words": 3})
    with pytest.raises(ValueError):
        check_strict(
            "length_constraints:number_words", "text", "", {"num_words": 3, "relation": "at most"}
        )


@pytest.mark.parametrize(
    "text", ["\n" * 50_000, "[" * 50_000, "<" * 50_000, " " * 50_000 + "p", "a" * 50_000]
)
def test_pathological_text_is_checked_in_linear_time(text):
    # The reference's regexes are quadratic on these (seconds at this size); ours are not.
    kwargs = {
        "detectable_format:number_bullet_lists": {"num_bullets": 1},
        "detectable_content:number_placeholders": {"num_placeholders": 1},
        "detectable_content:postscript": {"postscript_marker": "P.S."},
        "length_constraints:number_sentences": {"num_sentences": 1, "relation": "at least"},
    }
    started = time.perf_counter()
    for instruction_id in [*kwargs, "detectable_format:title"]:
        check_loose(instruction_id, text, "", kwargs.get(instruction_id, {}))
    assert time.perf_counter() - started < 2.0


def _reference(ids, kwargs, prompt="p"):
    return {"instruction_id_list": ids, "kwargs": kwargs, "prompt": prompt}


def test_verifier_scores_strict_fraction_and_strips_reasoning():
    ref = _reference(
        ["punctuation:no_comma", "startend:end_checker", "keywords:existence"],
        [{}, {"end_phrase": "The end.", "keywords": None}, {"keywords": ["moon"]}],
    )
    completion = "<think>I, a model, think about the sun.</think>Hello moon\nthe end.\nThanks!"
    verdict = InstructVerifier().verify(completion, ref)
    assert verdict.details["strict"] == [True, False, True]
    assert verdict.details["loose"] == [True, True, True]
    assert verdict.details["unsupported"] == []
    assert verdict.score == pytest.approx(2 / 3)
    assert verdict.passed is False
    assert InstructVerifier().verify("Hello moon. The end.", ref).passed is True


def test_verifier_skips_unsupported_ids():
    ref = _reference(["punctuation:no_comma", "made:up"], [{}, {}])
    verdict = InstructVerifier().verify("fine", ref)
    assert (verdict.score, verdict.passed) == (1.0, True)
    assert verdict.details["unsupported"] == ["made:up"]

    verdict = InstructVerifier().verify("fine", _reference(["made:up"], [{}]))
    assert (verdict.score, verdict.passed) == (0.0, False)
    assert verdict.details["reason"] == "no supported instruction"


def test_verifier_rejects_malformed_reference():
    with pytest.raises(ValueError, match="kwargs"):
        InstructVerifier().verify("x", _reference(["punctuation:no_comma"], [{}, {}]))
    with pytest.raises(ValueError, match="keywords:existence"):
        InstructVerifier().verify("x", _reference(["keywords:existence"], [{"keyword": "a"}]))


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<think>a</think>b", "b"),
        ("<think>a</think>b</think>c", "c"),
        ("<think>never closed", ""),
        ("plain", "plain"),
    ],
)
def test_strip_reasoning(completion, answer):
    assert strip_reasoning(completion) == answer


def test_verifier_is_registered():
    from posttrain.verifiers.base import get_verifier

    assert isinstance(get_verifier("instruct"), InstructVerifier)


def test_ifeval_rows_are_accepted():
    """Every shipped IFEval row's kwargs fit its checkers; count fully supported rows."""
    path = DATA / "benchmarks" / "ifeval.jsonl"
    if not path.exists():
        pytest.skip(f"no IFEval data at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    verifier = InstructVerifier()
    fully = 0
    for row in rows:
        ids = row["instruction_id_list"]
        assert set(ids) <= IFEVAL_INSTRUCTIONS
        for instruction_id, kwargs in zip(ids, row["kwargs"], strict=True):
            if instruction_id in CHECKERS:  # a TypeError here means kwargs don't fit
                check_loose(instruction_id, row["prompt"], row["prompt"], kwargs)
        verdict = verifier.verify(row["prompt"], row)
        fully += not verdict.details["unsupported"]
    print(f"IFEval rows fully supported: {fully}/{len(rows)}")
    assert len(rows) == 541
    assert fully >= 510  # all but the language:response_language rows without langdetect
