"""IFEval checkers for layout: content markers, formats, paragraphs, combinations, start/end.

Our own implementation of the semantics of Google's IFEval reference checkers
(``instructions.py`` of google-research/instruction_following_eval, as vendored by
lm-evaluation-harness' ``ifeval`` task). Each checker is a plain function
``(response, prompt, **kwargs) -> bool`` whose keyword-only parameters are the
instruction's kwargs as they appear in the IFEval data; a missing or unexpected kwarg
raises ``TypeError``. Where the reference builds a regular expression from a kwarg
we escape it (the shipped IFEval data gives the same results either way).

``ifeval_checks`` assembles these with the word-level checkers into one registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# Options of `detectable_format:constrained_response`, verbatim from the reference.
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def check_number_placeholders(response: str, prompt: str, *, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[address]``.

    Counts what the reference's ``re.findall(r"\\[.*?\\]")`` finds (a ``[`` closed by the
    next ``]`` on the same line), in linear time: the regex is quadratic on ``[[[[...``.
    """
    count = 0
    for line in response.split("\n"):
        close = -1
        while (opening := line.find("[", close + 1)) != -1:
            close = line.find("]", opening + 1)
            if close == -1:
                break
            count += 1
    return count >= num_placeholders


def check_postscript(response: str, prompt: str, *, postscript_marker: str) -> bool:
    """The postscript marker occurs anywhere in the response, case-insensitively.

    ``P.S.`` and ``P.P.S`` accept an optional space after each inner dot (``p. s.``); any
    other marker must appear literally. As in the reference, the marker need not start a
    line (its pattern ``\\s*p\\.\\s?s\\..*$`` is searched, not anchored).
    """
    text = response.lower()
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(marker.lower())
    return re.search(pattern, text) is not None


_NON_SPACE = re.compile(r"\S")


def _count_list_lines(text: str, marker: str, exclude_next: str | None) -> int:
    """How many matches ``re.findall(rf"^\\s*{marker}[^{exclude_next}].*$", text, re.M)``
    finds (``[^...]`` left out when ``exclude_next`` is None), in linear time.

    The regex's ``\\s*`` crosses blank lines, so every line start before the same first
    non-space character reaches the same verdict; we test each such character once.
    """
    count, pos = 0, 0
    while (found := _NON_SPACE.search(text, pos)) is not None:
        first = found.start()
        rest = first + 1
        matched = text[first] == marker
        if matched and exclude_next is not None:
            matched = rest < len(text) and text[rest] != exclude_next
            rest += 1  # the character after the marker belongs to the match
        end = text.find("\n", rest if matched else first)
        count += matched
        if end == -1:
            break
        pos = end + 1
    return count


def check_number_bullet_lists(response: str, prompt: str, *, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* item`` or ``- item``).

    A line counts when, after leading whitespace, it starts with ``*`` not followed by
    another ``*``, or with ``-`` (so a ``---`` rule counts too, as in the reference's
    ``^\\s*\\*[^\\*].*$`` and ``^\\s*-.*$``, whose counts we reproduce in linear time).
    """
    stars = _count_list_lines(response, "*", exclude_next="*")
    dashes = _count_list_lines(response, "-", exclude_next=None)
    return stars + dashes == num_bullets


def check_constrained_response(response: str, prompt: str) -> bool:
    """The response contains one of ``CONSTRAINED_RESPONSE_OPTIONS`` (case-sensitive)."""
    text = response.strip()
    return any(option in text for option in CONSTRAINED_RESPONSE_OPTIONS)


def check_number_highlighted_sections(response: str, prompt: str, *, num_highlights: int) -> bool:
    """At least ``num_highlights`` non-empty ``*highlighted*`` spans on single lines.

    As in the reference, a ``**bold**`` span also yields matches of the single-star
    pattern, so one bold span can count more than once.
    """
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip())
    count += sum(
        1
        for h in re.findall(r"\*\*[^\n\*]*\*\*", response)
        if h.removeprefix("**").removesuffix("**").strip()
    )
    return count >= num_highlights


def check_multiple_sections(
    response: str, prompt: str, *, section_spliter: str, num_sections: int
) -> bool:
    """At least ``num_sections`` section headers ``<spliter> <number>`` (case-sensitive).

    The kwarg keeps the reference's spelling ``section_spliter``.
    """
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def check_json_format(response: str, prompt: str) -> bool:
    """The whole response parses as JSON, optionally inside one markdown code fence.

    Nesting too deep for Python's parser counts as not JSON (the reference would crash).
    """
    text = (
        response.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # too deeply nested counts as not JSON
        return False
    return True


def check_title(response: str, prompt: str) -> bool:
    """A non-blank title in double angular brackets on one line, such as ``<<poem of joy>>``.

    Same verdict as the reference's ``re.findall(r"<<[^\\n]+>>")``: on each line that regex
    matches at most once, from the first ``<<`` to the last ``>>``; found here in linear time.
    """
    for line in response.split("\n"):
        opening, closing = line.find("<<"), line.rfind(">>")
        if opening != -1 and closing >= opening + 3:
            if line[opening : closing + 2].lstrip("<").rstrip(">").strip():
                return True
    return False


def check_number_paragraphs(response: str, prompt: str, *, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by the markdown divider ``***``.

    Empty text before the first or after the last divider is ignored; an empty paragraph
    between two dividers fails the check.
    """
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def check_nth_paragraph_first_word(
    response: str, prompt: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly ``num_paragraphs`` paragraphs split on ``\\n\\n``, and paragraph
    ``nth_paragraph`` (1-based) starts with ``first_word`` (case-insensitive).

    The first word is the paragraph's first whitespace token with leading quotes
    stripped, cut at the first ``. , ? ! ' "``. As in the reference, blank paragraphs
    are dropped from the count but not from the indexing.
    """
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(nth_paragraph)
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        found += letter.lower()
    return count == num_paragraphs and found == first_word.lower()


def check_two_responses(response: str, prompt: str) -> bool:
    """Two different non-empty responses separated by ``******``.

    Empty parts are allowed only before the first or after the last separator.
    """
    parts = response.split("******")
    valid = []
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def check_repeat_prompt(response: str, prompt: str, *, prompt_to_repeat: str) -> bool:
    """The response starts with ``prompt_to_repeat``, compared case-insensitively after
    stripping surrounding whitespace from both.

    Raises:
        ValueError: if ``prompt_to_repeat`` is empty (the reference refuses it too).
    """
    if not prompt_to_repeat:
        raise ValueError("prompt_to_repeat must be set")
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def check_end_checker(response: str, prompt: str, *, end_phrase: str) -> bool:
    """The response, stripped of whitespace and then of double quotes, ends with
    ``end_phrase`` (case-insensitive)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def check_quotation(response: str, prompt: str) -> bool:
    """The stripped response is at least two characters and wrapped in ``"`` ... ``"``."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


FORMAT_CHECKERS: dict[str, Callable[..., bool]] = {
    "detectable_content:number_placeholders": check_number_placeholders,
    "detectable_content:postscript": check_postscript,
    "detectable_format:number_bullet_lists": check_number_bullet_lists,
    "detectable_format:constrained_response": check_constrained_response,
    "detectable_format:number_highlighted_sections": check_number_highlighted_sections,
    "detectable_format:multiple_sections": check_multiple_sections,
    "detectable_format:json_format": check_json_format,
    "detectable_format:title": check_title,
    "length_constraints:number_paragraphs": check_number_paragraphs,
    "length_constraints:nth_paragraph_first_word": check_nth_paragraph_first_word,
    "combination:two_responses": check_two_responses,
    "combination:repeat_prompt": check_repeat_prompt,
    "startend:end_checker": check_end_checker,
    "startend:quotation": check_quotation,
}
