"""IFEval instruction checkers: word-level checks, the registry, strict and loose checking.

Our own implementation of the semantics of Google's IFEval reference checkers
(``instructions.py`` / ``evaluation_lib.py`` of google-research/instruction_following_eval,
as vendored by lm-evaluation-harness' ``ifeval`` task; Zhou et al. 2023, arXiv:2311.07911).
Layout checkers live in ``ifeval_format_checks``; this module holds the word-, keyword-
and case-level ones and the registry ``CHECKERS`` mapping instruction id -> checker.

Every checker is ``(response: str, prompt: str, **kwargs) -> bool``; its keyword-only
parameters are the instruction's kwargs as the IFEval data spells them, so a missing or
unexpected kwarg raises ``TypeError`` and a bad ``relation`` raises ``ValueError``.

Where we depart from the reference, because its tools need data we cannot download:
- sentences (``length_constraints:number_sentences``) are counted by a regex splitter,
  not NLTK's Punkt model; see ``split_sentences`` for the rules. Counts can differ from
  Punkt's where Punkt's learned statistics decide (rare abbreviations, initials before
  common words, ellipses).
- words for ``change_case:capital_word_frequency`` come from a regex that mimics NLTK's
  Treebank ``word_tokenize``; see ``capital_words``.
- language identification needs ``langdetect``: without it ``language:response_language``
  is unsupported, and the two ``change_case:english_*`` checks test the letter case only.
``length_constraints:number_words`` uses ``\\w+`` tokens, which is exactly the reference's
NLTK ``RegexpTokenizer(r"\\w+")``. Keywords are regex-escaped (the reference uses them as
patterns; no shipped keyword differs) and ``keywords:letter_frequency`` counts any single
character (the reference swaps a non-letter for a random letter).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from posttrain.verifiers.ifeval_format_checks import FORMAT_CHECKERS

try:  # optional: language identification, as the reference uses
    import langdetect
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # langdetect is randomised; fix it so a verdict is reproducible
except ImportError:  # pragma: no cover - depends on the environment
    langdetect = None

RELATIONS = ("less than", "at least")

# All 25 IFEval instruction ids; `CHECKERS` holds those this environment can check.
IFEVAL_INSTRUCTIONS = frozenset(
    {
        "keywords:existence", "keywords:frequency", "keywords:forbidden_words",
        "keywords:letter_frequency", "language:response_language",
        "length_constraints:number_words", "length_constraints:number_paragraphs",
        "length_constraints:nth_paragraph_first_word", "length_constraints:number_sentences",
        "detectable_content:number_placeholders", "detectable_content:postscript",
        "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
        "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
        "detectable_format:json_format", "detectable_format:title",
        "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
        "startend:quotation", "change_case:capital_word_frequency",
        "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma",
    }
)  # fmt: skip


class UnsupportedInstruction(LookupError):
    """An instruction id that has no checker here (unknown, or its dependency is missing)."""


def _compare(count: int, relation: str, threshold: int) -> bool:
    """``count < threshold`` for "less than", ``count >= threshold`` for "at least".

    Raises:
        ValueError: for any other relation.
    """
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# ---------------------------------------------------------------- tokenisers
def count_words(text: str) -> int:
    """Number of ``\\w+`` tokens (the reference's word count, exactly)."""
    return len(re.findall(r"\w+", text))


# A candidate sentence end inside a whitespace-free chunk, as in Punkt: terminal
# punctuation (closing marks may sit inside a run, as in `?".`) at the chunk's end or
# before other punctuation (a closing quote, bracket, markdown star, ...).
_CLOSE = "\"'”’)\\]}*"
_SENTENCE_END = re.compile(rf"[.!?]+(?:[{_CLOSE}]+[.!?]+)*(?=[{_CLOSE};:@({{\[]|$)")
_CHUNK = re.compile(r"\S+")
# Closing marks that go with the sentence before the break: those right after the
# punctuation, and quotes or brackets opening the next line, when whitespace follows them.
_CLOSERS = re.compile(rf"(?:[{_CLOSE}]*(?=\s|$)(?:\s+[\"'”’)\]}}]+(?=\s|$))?)?")
# The next word, capped: the rules only look at its start (and the cap keeps this linear).
_NEXT_WORD = re.compile(r"\s*(\S{0,40})")
_MAX_TOKEN = 40  # longer tokens are ordinary words: no abbreviation, initial or number
_NUMBER = re.compile(r"-?[.,]?\d[\d,.-]*")
# Common entries of the abbreviation list of NLTK's English Punkt model, with its one-letter
# ones; "e.g", "i.e" and "etc" are not on it, so Punkt ends a sentence after them.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs u.s a.m p.m inc ltd co corp gen sen rep lt col maj ft ave"
    " jan feb aug sep sept oct nov dec ph.d c d e f g h k l m n p r s t v w".split()
)
# Capitalised words that make Punkt end a sentence even after an abbreviation or ellipsis.
_SENTENCE_STARTERS = frozenset(
    "according although among both but despite even he however i if in indeed instead it"
    " many meanwhile moreover most nevertheless nonetheless nor similarly since so some the"
    " there these they this though thus under when while yet".split()
)


def _ends_sentence(token: str, punct: str, next_word: str) -> bool:
    """Whether ``token`` + ``punct`` ends a sentence, given the next word.

    Mimics Punkt's rules, with a fixed word list where Punkt consults corpus statistics:
    ``!``/``?`` always end one. After an ellipsis or a known abbreviation only a
    capitalised common sentence starter ("The", "However", ...) does. A period after a
    one-letter abbreviation ("F." in Punkt's list) never does; after another single
    letter, only before a capitalised word that is not itself an initial; after a number,
    unless a lower-case word follows. Any other period does.
    """
    marks = re.sub(rf"[{_CLOSE}]", "", punct)
    if "!" in marks or "?" in marks:
        return True
    word = token.lstrip("\"'“‘([*").lower()
    if len(word) == 1 and word in _ABBREVIATIONS:
        return False
    if len(marks) > 1 or word in _ABBREVIATIONS:
        starter = re.sub(r"\W", "", next_word)
        return starter[:1].isupper() and starter.lower() in _SENTENCE_STARTERS
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien", "type B. One"
        return next_word[:1].isupper() and not re.fullmatch(r"\w\.", next_word)
    if _NUMBER.fullmatch(word):
        return not next_word[:1].islower()
    return True


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with regular expressions (a stand-in for NLTK Punkt).

    A candidate end is a run of ``. ! ?`` followed by whitespace, the end of the text or
    other punctuation; ``_ends_sentence`` decides. Closing quotes, brackets and ``*``
    followed by whitespace stay with the sentence they close. As with Punkt, line breaks
    alone do not end a sentence and a line-leading list number such as ``1.`` is a
    sentence of its own. Returns the stripped, non-empty sentences; an unterminated tail
    counts as one. Runs in time linear in ``len(text)``.
    """
    sentences: list[str] = []
    start = 0
    for chunk in _CHUNK.finditer(text):
        for match in _SENTENCE_END.finditer(text, chunk.start(), chunk.end()):
            if match.start() < start:
                continue  # inside closing marks already given to the previous sentence
            token_start = chunk.start()
            long_token = match.start() - token_start > _MAX_TOKEN
            token = "" if long_token else text[token_start : match.start()]
            end = _CLOSERS.match(text, match.end()).end()
            next_word = _NEXT_WORD.match(text, end).group(1)
            if not _ends_sentence(token, match.group(), next_word):
                continue
            sentence = text[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def count_sentences(text: str) -> int:
    """Number of sentences by ``split_sentences``."""
    return len(split_sentences(text))


# Where NLTK's Treebank word tokenizer cuts a text (whitespace and these marks), and the
# contractions it splits into two tokens ("DON'T" -> "DO", "N'T"; "CANNOT" -> "CAN", "NOT").
_WORD_BREAKS = re.compile(r"[\s,;:@#$%&?!()\[\]{}<>\"“”‘’«»„`*\u2012-\u2015]+|--|\.{2,}")
_CONTRACTION = re.compile(r"(?i)(.+?)('s|'m|'d|'ll|'re|'ve|n't)")
_TWO_WORDS = re.compile(r"(?i)(can)(not)|(gim)(me)|(gon)(na)|(got)(ta)|(lem)(me)|(wan)(na)")


def capital_words(text: str) -> list[str]:
    """Tokens written in capitals (``str.isupper``), tokenised like NLTK's ``word_tokenize``.

    A regex stand-in for NLTK's ``NLTKWordTokenizer`` (``word_tokenize`` needs Punkt data):
    tokens break at whitespace, ``, ; : @ # $ % & ? ! *``, brackets, double and curly
    quotes, dashes ``–—``, ``--`` and ellipses; hyphens, slashes and single dots stay
    inside (``WELL-KNOWN``, ``P.S.`` are one token); contractions split off (``DON'T``
    counts twice). One-letter words such as ``I`` and ``A`` count.
    """
    tokens: list[str] = []
    for chunk in _WORD_BREAKS.split(text):
        parts = _CONTRACTION.fullmatch(chunk) or _TWO_WORDS.fullmatch(chunk)
        if parts:
            tokens.extend(g for g in parts.groups() if g)
        else:
            tokens.append(chunk)
    return [t for t in tokens if t.isupper()]


# ---------------------------------------------------------------- checkers
def check_keywords_existence(response: str, prompt: str, *, keywords: list[str]) -> bool:
    """Every keyword occurs somewhere, as a case-insensitive substring."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def check_keyword_frequency(
    response: str, prompt: str, *, keyword: str, frequency: int, relation: str
) -> bool:
    """Case-insensitive substring occurrences of ``keyword`` compared with ``frequency``.

    Raises:
        ValueError: if ``relation`` is not "less than" or "at least".
    """
    count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def check_forbidden_words(response: str, prompt: str, *, forbidden_words: list[str]) -> bool:
    """None of ``forbidden_words`` occurs as a whole word (``\\b`` bounded, any case)."""
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
        for w in forbidden_words
    )


def check_letter_frequency(
    response: str, prompt: str, *, letter: str, let_frequency: int, let_relation: str
) -> bool:
    """Occurrences of ``letter`` (case-insensitive) compared with ``let_frequency``.

    Any single character is counted: IFEval row key 1122 asks for ``#``, for which the
    reference silently substitutes a random letter; we count ``#`` as the prompt means.

    Raises:
        ValueError: if ``letter`` is not one character, or for a bad ``let_relation``.
    """
    target = letter.strip().lower()
    if len(target) != 1:
        raise ValueError(f"letter must be one character, got {letter!r}")
    return _compare(response.lower().count(target), let_relation, let_frequency)


def check_response_language(response: str, prompt: str, *, language: str) -> bool:
    """``langdetect`` identifies the response as ``language`` (ISO 639-1 code).

    Undetectable text (no letters) counts as followed, as in the reference.

    Raises:
        UnsupportedInstruction: if ``langdetect`` is not installed.
    """
    if langdetect is None:
        raise UnsupportedInstruction("language:response_language needs langdetect")
    try:
        return langdetect.detect(response) == language
    except langdetect.LangDetectException:
        return True


def _is_english(text: str) -> bool:
    """True if ``langdetect`` says English, cannot decide, or is not installed."""
    if langdetect is None:
        return True
    try:
        return langdetect.detect(text) == "en"
    except langdetect.LangDetectException:
        return True


def check_number_words(response: str, prompt: str, *, num_words: int, relation: str) -> bool:
    """``\\w+`` word count compared with ``num_words``.

    Raises:
        ValueError: for a bad ``relation``.
    """
    return _compare(count_words(response), relation, num_words)


def check_number_sentences(
    response: str, prompt: str, *, num_sentences: int, relation: str
) -> bool:
    """Sentence count (``count_sentences``, a Punkt approximation) vs ``num_sentences``.

    Raises:
        ValueError: for a bad ``relation``.
    """
    return _compare(count_sentences(response), relation, num_sentences)


def check_capital_word_frequency(
    response: str, prompt: str, *, capital_frequency: int, capital_relation: str
) -> bool:
    """Number of all-capital words (``capital_words``) compared with ``capital_frequency``.

    Raises:
        ValueError: for a bad ``capital_relation``.
    """
    return _compare(len(capital_words(response)), capital_relation, capital_frequency)


def check_english_capital(response: str, prompt: str) -> bool:
    """All cased characters are upper case (``str.isupper``) and the text is English."""
    return response.isupper() and _is_english(response)


def check_english_lowercase(response: str, prompt: str) -> bool:
    """All cased characters are lower case (``str.islower``) and the text is English."""
    return response.islower() and _is_english(response)


def check_no_comma(response: str, prompt: str) -> bool:
    """No ASCII comma anywhere in the response."""
    return "," not in response


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": check_keywords_existence,
    "keywords:frequency": check_keyword_frequency,
    "keywords:forbidden_words": check_forbidden_words,
    "keywords:letter_frequency": check_letter_frequency,
    "length_constraints:number_words": check_number_words,
    "length_constraints:number_sentences": check_number_sentences,
    "change_case:capital_word_frequency": check_capital_word_frequency,
    "change_case:english_capital": check_english_capital,
    "change_case:english_lowercase": check_english_lowercase,
    "punctuation:no_comma": check_no_comma,
    **FORMAT_CHECKERS,
}
if langdetect is not None:
    CHECKERS["language:response_language"] = check_response_language


# ---------------------------------------------------------------- strict and loose
def supported_instructions() -> set[str]:
    """Instruction ids that have a checker in this environment."""
    return set(CHECKERS)


def get_checker(instruction_id: str) -> Callable[..., bool]:
    """The checker for ``instruction_id``.

    Raises:
        UnsupportedInstruction: if the id is unknown or its dependency is missing.
    """
    try:
        return CHECKERS[instruction_id]
    except KeyError:
        why = "needs an optional dependency" if instruction_id in IFEVAL_INSTRUCTIONS else "unknown"
        raise UnsupportedInstruction(f"instruction {instruction_id!r} is {why}") from None


def clean_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop ``None`` values (the HF IFEval rows carry every kwarg name, mostly ``None``)."""
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def loose_variants(response: str) -> list[str]:
    """The eight texts IFEval's loose check tries, in its order.

    The response; without asterisks; without its first line, last line, or both
    (each stripped); and those three without asterisks.
    """
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        no_first,
        no_last,
        no_both,
        no_first.replace("*", ""),
        no_last.replace("*", ""),
        no_both.replace("*", ""),
    ]


def check_strict(
    instruction_id: str, response: str, prompt: str, kwargs: Mapping[str, Any] | None
) -> bool:
    """IFEval's strict check: the response is not blank and the checker accepts it.

    Raises:
        UnsupportedInstruction: for an id without a checker.
        TypeError: if ``kwargs`` (after dropping ``None``) do not fit the checker.
        ValueError: for an invalid kwarg value (e.g. an unknown relation).
    """
    checker = get_checker(instruction_id)
    return bool(response.strip()) and checker(response, prompt, **clean_kwargs(kwargs))


def check_loose(
    instruction_id: str, response: str, prompt: str, kwargs: Mapping[str, Any] | None
) -> bool:
    """IFEval's loose check: any non-blank ``loose_variants`` text passes the checker.

    Raises:
        The same errors as ``check_strict``.
    """
    checker = get_checker(instruction_id)
    args = clean_kwargs(kwargs)
    return any(v.strip() and checker(v, prompt, **args) for v in loose_variants(response))
