"""Multiple-choice verifier (STEM): the chosen option label against the reference label.

Reference: ``choices`` as ``[{label, text}, ...]`` or MMLU-Pro's ``options`` (a list of strings
labelled A, B, ...), and ``answer`` (a label: a letter A-J, or a digit where the data uses digits,
as some ARC rows do). Labels compare case-insensitively.

The chosen label is, in order of preference, from the text after the reasoning block:
1. the last ``\\boxed{X}`` (a label, "(B)", "B. text", or an option's text);
2. the last "answer is (X)" / "answer is X" / "Answer: X" / "answer is <an option's text>";
3. a final line that is a label, an option's text, or a label with its text ("B. amphibians").
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.math import after_reasoning, extract_boxed

_LETTERS = string.ascii_uppercase[:10]  # A-J: MMLU-Pro has up to ten options
_ANSWER_PHRASE = r"(?i:answer)\s*(?:is|:)\s*\**\s*:?\s*"
# "(x)" may be lower case; a bare letter must be upper case ("the answer is a bit" is no answer).
_ANSWER_PAREN = re.compile(_ANSWER_PHRASE + r"\(([A-Za-z]|\d{1,2})\)")
_ANSWER_BARE = re.compile(_ANSWER_PHRASE + r"([A-Z]|\d{1,2})(?![\w])")
_ANSWER_REST = re.compile(_ANSWER_PHRASE + r"([^\n]+)")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_LEADING_LABEL = re.compile(r"^\(?([A-Za-z]|\d{1,2})\)?(?:[.:)]|\s|$)")


def option_labels(reference: Mapping[str, Any]) -> dict[str, str]:
    """Map each label (upper case) to its option text, from ``choices`` or ``options``.

    Without either field every label A-J and 1-10 is allowed, with no texts to match.

    Raises:
        ValueError: if ``choices`` entries lack ``label``/``text``, or ``options`` has over ten.
    """
    choices, options = reference.get("choices"), reference.get("options")
    if choices:
        try:
            pairs = [(_field(c, "label"), _field(c, "text")) for c in choices]
        except (KeyError, AttributeError) as e:
            raise ValueError(f"choice reference 'choices' entries need 'label' and 'text': {e}") from None
        return {str(label).strip().upper(): str(text) for label, text in pairs}
    if options:
        if len(options) > len(_LETTERS):
            raise ValueError(f"choice reference 'options' has {len(options)} entries; at most 10")
        return {_LETTERS[i]: str(text) for i, text in enumerate(options)}
    return {label: "" for label in [*_LETTERS, *map(str, range(1, 11))]}


def _field(choice: Any, name: str) -> Any:
    """A choice's field, whether it is a mapping or a ``records.Choice`` model."""
    return choice[name] if isinstance(choice, Mapping) else getattr(choice, name)


def _norm_text(text: str, fold_case: bool = True) -> str:
    """LaTeX text wrappers, markdown and quotes at the ends, and a trailing full stop removed;
    lower case when ``fold_case``. A leading "." stays: ".8 lb" is not "8 lb"."""
    text = _LATEX_WRAPPER.sub(r"\1", text)
    text = " ".join(text.split()).strip(" *$:`'\"").rstrip(".").strip(" *$:`'\"")
    return text.lower() if fold_case else text


def _option_with_text(text: str, labels: dict[str, str]) -> str | None:
    """The one label whose option text ``text`` is: matched exactly first (MMLU-Pro has options
    differing only in case, "Bb Bb" vs "BB bb"), then ignoring case; None if no option, or
    several, match."""
    for fold_case in (False, True):
        wanted = _norm_text(text, fold_case)
        hits = [label for label, t in labels.items() if t.strip() and _norm_text(t, fold_case) == wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None
    return None


def _label_in(text: str, labels: dict[str, str], leading: bool) -> str | None:
    """The label ``text`` names: the label itself ("B", "(B)"), an option's text, a label
    followed by its own option text ("B. amphibians"), or, when ``leading`` is set, any leading
    "(B) ..." / "B. ..." / "B ..." label.

    A label reading wins over an option text that is itself a label-like string (an MMLU-Pro
    option "(a)" or "E"): a boxed "E" means option E.
    """
    cleaned = _norm_text(text)
    if cleaned.strip("()").upper() in labels:
        return cleaned.strip("()").upper()
    by_text = _option_with_text(text, labels)
    if by_text is not None:
        return by_text
    match = _LEADING_LABEL.match(cleaned)
    if match and match.group(1).upper() in labels:
        label = match.group(1).upper()
        # "B. amphibians" names B when its text follows; a bare leading label only where allowed
        if leading or (labels[label].strip() and _norm_text(cleaned[match.end():]) == _norm_text(labels[label])):
            return label
    return None


def _answer_phrase(text: str, labels: dict[str, str]) -> str | None:
    """The label of the last "answer is (X)" / "answer is X" / "Answer: <option text>" whose X
    is a known label or whose rest of the line is exactly one option's text."""
    matches = [m for rx in (_ANSWER_PAREN, _ANSWER_BARE) for m in rx.finditer(text)]
    # (position, is a label reading, label): at one position a label reading beats option text,
    # as in a box ("Answer: B" is option B even where option D's text is "B").
    found = [(m.start(), True, m.group(1).upper()) for m in matches]
    for m in _ANSWER_REST.finditer(text):
        label = _option_with_text(m.group(1), labels)
        if label is not None:
            found.append((m.start(), False, label))
    found = [item for item in found if item[2] in labels]
    return max(found)[2] if found else None


def extract_choice(completion: str, labels: dict[str, str]) -> tuple[str | None, str]:
    """Return (label, how) for the option a completion chooses; label None if it chooses none.

    ``how`` is "boxed", "answer phrase", "final line" or "none".
    """
    text = after_reasoning(completion)
    if text is None:
        return None, "none"
    boxed = extract_boxed(text)
    if boxed is not None:
        return _label_in(boxed, labels, leading=True), "boxed"
    label = _answer_phrase(text, labels)
    if label is not None:
        return label, "answer phrase"
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        label = _label_in(lines[-1], labels, leading=False)
        if label is not None:
            return label, "final line"
    return None, "none"


@register_verifier("choice")
class ChoiceVerifier:
    """Multiple-choice label match: reference ``answer`` plus ``choices`` or ``options``."""

    name = "choice"
    reference_fields = ("answer",)

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion``: score 1.0 if its chosen label equals ``reference["answer"]``.

        Details: ``{"extracted", "gold", "reason", "how"}``.

        Raises:
            ValueError: if ``answer`` is missing or not among the option labels.
        """
        gold = str(reference.get("answer") or "").strip().upper()
        labels = option_labels(reference)
        if gold not in labels:
            given = reference.get("answer")
            raise ValueError(f"choice reference 'answer' {given!r} is not one of {sorted(labels)}")
        label, how = extract_choice(completion, labels)
        details = {"extracted": label, "gold": gold, "how": how}
        if label is None:
            return Verdict(0.0, False, {**details, "reason": "no answer found"})
        ok = label == gold
        return Verdict(float(ok), ok, {**details, "reason": "correct" if ok else "wrong answer"})
