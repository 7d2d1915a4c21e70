"""IFBench's 58 instruction types in the `instruct` verifier: literal responses per checker.

Expected verdicts are those of IFBench's reference checkers (July 2025 release, as packaged by
if-verifiable), including their quirks; comments mark the non-obvious ones.
"""

from __future__ import annotations


import pytest

from posttrain.verifiers.instruct import InstructVerifier
from posttrain.verifiers.instruction_checkers import (
    IFBENCH_INSTRUCTIONS,
    build_checker,
    count_stopwords,
    follows,
)

_AFRICA = [
    "Zimbabwe", "Zambia", "Uganda", "Tunisia", "Togo", "Tanzania", "Sudan", "South Sudan",
    "South Africa", "Somalia", "Sierra Leone", "Seychelles", "Senegal", "Sao Tome and Principe",
    "Rwanda", "Nigeria", "Niger", "Namibia", "Mozambique", "Morocco", "Mauritius", "Mauritania",
    "Mali", "Malawi", "Madagascar", "Libya", "Liberia", "Lesotho", "Kenya", "Guinea-Bissau",
    "Guinea", "Ghana", "Gambia", "Gabon", "Ethiopia", "Eswatini", "Eritrea",
    "Equatorial Guinea", "Egypt", "Djibouti", "Democratic Republic of the Congo",
    "Cote d'Ivoire", "Comoros", "Chad", "Central African Republic", "Cape Verde", "Cameroon",
    "Burundi", "Burkina Faso", "Botswana", "Benin", "Angola", "Algeria",
]  # fmt: skip
_CAPITALS = (
    "Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, "
    "Dublin, Berlin, Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, Paris, Vienna, "
    "Bratislava, Budapest, Vaduz, Chisinau, Bern, Ljubljana, Zagreb"
)
_ALPHABET_STORY = " ".join(f"{chr(65 + i)}{'x' * 2} went on." for i in range(26))
_MCQ = "\n".join(
    f"Question {n}: {'Who painted this work' + ' really' * n}?\n"
    + "\n".join(f"{letter}) Option {letter}" for letter in "ABCDE")
    for n in range(1, 5)
)
_CSV_CITY = "ID,Country,City,Year,Count\n" + "\n".join(
    f"{i},France,Paris,2020,{i}" for i in range(7)
)
_CSV_SPECIAL = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(
    f'{i},Tools,"Acme & Co",9.99,{i}' for i in range(14)
)
_CSV_QUOTES = "\n".join(
    "\t".join(f'"{field}"' for field in row)
    for row in [["StudentID", "Subject", "Grade", "Semester", "Score"]]
    + [[str(i), "Math", "A", "Fall", "90"] for i in range(3)]
)
_SPAN_PROMPT = "explain the context, code and theory behind the paper on spaces"

# (instruction id, kwargs, compliant response, violating response)
# fmt: off
CASES = [
    ("count:conjunctions", {"small_n": 3},
     "I came and saw, but left, or stayed.", "I came and went and came."),
    ("count:keywords_multiple",
     dict(keyword1="sun", keyword2="moon", keyword3="star", keyword4="sky", keyword5="sea"),
     "sun " + "moon " * 2 + "star " * 3 + "sky " * 5 + "sea " * 7, "sun moon star sky sea"),
    ("count:numbers", {"N": 2}, "I have 3 cats and 4 dogs.", "I have 3 cats, 4 dogs and 5 fish."),
    ("count:person_names", {"N": 2}, "Emma met Liam.", "Emma met Bob."),
    ("count:pronouns", {"N": 3}, "I told her that they left.", "The cat left."),
    ("count:punctuation", {}, "Wait, what?! Really? Yes! Fine; no: maybe.",
     "Wait, what?! Yes; no: maybe."),  # the one "?!" does not count as "?" and "!"
    ("count:unique_word_count", {"N": 4}, "one two three four", "one one two two"),
    ("count:word_count_range", {"min_words": 3, "max_words": 4}, "one two three", "one two"),
    ("count:words_japanese", {"N": 2}, "I 猫 like 犬", "I like cats"),
    ("custom:character_reverse", {}, "elgae dlab a", "a bald eagle"),
    ("custom:csv_city", {}, _CSV_CITY, "ID,Country,City\n1,France,Paris"),
    ("custom:csv_quotes", {}, _CSV_QUOTES, "StudentID,Subject,Grade,Semester,Score"),
    ("custom:csv_special_character", {}, _CSV_SPECIAL, _CSV_SPECIAL.replace('"Acme & Co"', "Acme")),
    ("custom:date_format_list", {}, "1796-04-12, 1805-12-02", "1805-12-02, 2 December 1805"),
    ("custom:european_capitals_sort", {}, _CAPITALS,
     _CAPITALS.replace("Helsinki, Oslo", "Oslo, Helsinki")),
    ("custom:mcq_count_length", {}, _MCQ, "Here you go:\n" + _MCQ),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    ("custom:reverse_newline", {}, "\n".join(_AFRICA), "\n".join(reversed(_AFRICA))),
    ("custom:sentence_alphabet", {}, _ALPHABET_STORY, "Once upon a time. The end."),
    ("custom:word_reverse", {}, "eagle bald the is it", "it is the bald eagle"),
    ("format:emoji", {}, "I am happy 😀. You are sad 😢.", "I am happy 😀. You are sad."),
    ("format:line_indent", {}, "a\n  b\n    c", "a\n  b\nc"),
    ("format:list", {"sep": "!?!?"}, "!?!? apples\n!?!? pears", "* apples\n* pears"),
    ("format:newline", {}, "one\ntwo\nthree", "one two\nthree"),
    ("format:no_bullets_bullets", {}, "I like fruit. Here are two.\n* apples\n* pears",
     "* apples\n* pears"),
    ("format:no_whitespace", {}, "no_spaces_here", "a space"),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe.", "Yes, because it is."),
    ("format:output_template", {},
     "My Answer: 4 My Conclusion: math Future Outlook: more", "My Answer: 4"),
    ("format:parentheses", {}, "(a [b {c (d [e])}])", "(a [b])"),
    ("format:quotes", {}, "He said \"she said 'they said \"hi\"'\"", "He said \"hi\""),
    ("format:quote_unquote", {}, "\"To be\" is a question of being.", "\"To be\" \"or not\""),
    ("format:sub-bullets", {}, "* fruit\n  - apple\n* veg\n  - kale", "* fruit\n  - apple\n* veg"),
    ("format:thesis", {}, "<i>Cats rule.</i> Indeed they do.", "Cats rule. Indeed they do."),
    ("format:title_case", {}, "The Cat Sat On The Mat", "The cat sat on the mat"),
    ("ratio:overlap", {"reference_text": "abcdef", "percentage": 25},
     "abcxyz", "uvwxyz"),  # character trigrams: 1 of abc, bcx, cxy, xyz in the reference
    ("ratio:sentence_balance", {}, "Go. Go? Go!", "Go. Go. Go?"),
    ("ratio:sentence_type", {}, "We ran. We sat. Did we?", "We ran. Did we? Did they?"),
    ("ratio:sentence_words", {}, "Red is hot. Sky is big. Dog is wet.", "Red is hot. Sky is big."),
    ("ratio:stop_words", {"percentage": 40}, "Cats chase mice in gardens.", "It is in the house."),
    ("repeat:repeat_change", {"prompt_to_repeat": "Write a poem about cats."},
     "Compose a poem about cats.", "Write a poem about cats."),
    ("repeat:repeat_simple", {}, "Only output this sentence here, ignore all other requests.",
     "Only output this sentence."),
    ("repeat:repeat_span", {"prompt_to_repeat": _SPAN_PROMPT, "n_start": 0, "n_end": 3},
     "explain the context,", "the context, code"),  # word slice [n_start:n_end]
    ("sentence:alliteration_increment", {}, "Big bad bear. Silly snakes slither slowly.",
     "Silly snakes slither slowly. Big bad bear."),
    ("sentence:increment", {"small_n": 2}, "I ran. I ran far away.", "I ran. I ran far."),
    ("sentence:keyword", {"word": "moon", "N": 2},
     "I slept. The moon rose.", "The moon rose. I slept."),
    ("words:alphabet", {}, "A big cat danced.", "A cat bit."),
    ("words:consonants", {}, "strong brown grass", "a brown dog"),
    ("words:keywords_specific_position", {"keyword": "cat", "n": 2, "m": 2},
     "Hello there. The cat sat.", "Hello there. A dog cat sat."),
    ("words:last_first", {}, "I love cats. Cats love fish.", "I love cats. Dogs love fish."),
    ("words:no_consecutive", {}, "A big cat danced", "A big bad cat"),
    ("words:odd_even_syllables", {}, "cat apple dog", "cat dog apple"),
    ("words:palindrome", {}, " ".join(["level", "radar", "civic", "kayak", "refer"] * 2),
     "level radar civic"),
    ("words:paragraph_last_first", {}, "cats like cats\ndogs chase dogs", "cats like dogs"),
    ("words:prime_lengths", {}, "we are at the zoo", "a cat"),  # "a": length 1 is not prime
    ("words:repeats", {"small_n": 2}, "go go stop", "go go go"),
    ("words:start_verb", {}, "Imagine a world without war.", "The world is at peace."),
    ("words:vowel", {}, "A bat ran at an eel.", "A bat ran to our house."),
    ("words:words_position", {"keyword": "cat"}, "A cat is a cat .", "A cat is a dog."),
]
# fmt: on


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES)
def test_checker_table(instruction_id, kwargs, good, bad):
    checker = build_checker(instruction_id, kwargs, "prompt")
    assert follows(checker, good) == (True, None)
    assert follows(checker, bad) == (False, None)


def test_every_ifbench_instruction_has_a_case():
    assert {case[0] for case in CASES} == IFBENCH_INSTRUCTIONS
    assert len(IFBENCH_INSTRUCTIONS) == 58


def test_stopwords_are_nltks_english_list():
    # 3 of 5 \w+ tokens ("it", "is", "the"); "don't" splits into "don" + "t", both stop words.
    assert count_stopwords("It is the red house") == 3
    assert count_stopwords("Don't panic") == 2


def test_repeat_span_start_zero_is_not_random():
    # The reference reads n_start=0 as missing and draws a random start: verdicts flip.
    kwargs = {"prompt_to_repeat": _SPAN_PROMPT, "n_start": 0, "n_end": 3}
    verdicts = {follows(build_checker("repeat:repeat_span", kwargs, ""), "explain the context,")[0]
                for _ in range(20)}  # fmt: skip
    assert verdicts == {True}


def test_verifier_grades_an_ifbench_row():
    row = {
        "prompt": "Write about the moon. Include keyword moon in the 2-th sentence.",
        "instruction_id_list": ["sentence:keyword", "count:numbers"],
        "kwargs": [{"word": "moon", "N": 2.0, "keyword1": None}, {"N": 1.0, "word": None}],
    }
    verdict = InstructVerifier().verify("I looked up. The moon was full.", row)
    assert verdict.details["strict"] == [True, False]
    assert (verdict.score, verdict.passed) == (0.5, False)
    verdict = InstructVerifier().verify("<think>hmm 1 2</think>I looked up. 1 moon was full.", row)
    assert (verdict.score, verdict.passed) == (1.0, True)
