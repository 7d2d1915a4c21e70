"""A learnable toy verifier for the smoke recipe (a random tiny model must see rewards vary).

Reference ``answer``: a string of digits, e.g. ``"4071"``. With ``text`` the completion after the
reasoning block, stripped, and ``window`` its first ``2 * len(answer)`` non-space characters:

    score  = |multiset(answer digits) ∩ multiset(window characters)| / len(answer)   in [0, 1]
    passed = text.startswith(answer)

The score is graded (each matching digit adds ``1 / len(answer)``), so random completions of
a tiny model differ in reward inside a group and GRPO advantages are non-zero; passing implies
score 1.0. A completion cut off inside ``<think>`` scores 0.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.math import after_reasoning


def digit_overlap(text: str, answer: str) -> float:
    """Fraction of ``answer``'s characters (as a multiset) found in the first ``2*len(answer)``
    non-space characters of ``text``. Returns a float in [0, 1]; 0.0 for an empty answer."""
    if not answer:
        return 0.0
    window = "".join(text.split())[: 2 * len(answer)]
    common = Counter(answer) & Counter(window)
    return sum(common.values()) / len(answer)


@register_verifier("synthetic_digits")
class SyntheticDigitsVerifier:
    """Toy digits task: graded digit overlap as score, exact prefix as pass (module docstring)."""

    name = "synthetic_digits"
    reference_fields = ("answer",)

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion`` against the digit string ``reference["answer"]``.

        Details: ``{"extracted", "gold", "reason"}`` with ``extracted`` the stripped answer text
        (first 64 characters).

        Raises:
            ValueError: if ``answer`` is not a non-empty string of digits.
        """
        gold = reference.get("answer")
        if not isinstance(gold, str) or not (gold.isascii() and gold.isdigit()):
            raise ValueError(f"synthetic_digits reference 'answer' must be a string of digits, got {gold!r}")
        text = after_reasoning(completion)
        text = "" if text is None else text.strip()
        score = digit_overlap(text, gold)
        passed = text.startswith(gold)
        reason = "correct" if passed else ("partial" if score > 0 else "wrong answer")
        return Verdict(score, passed, {"extracted": text[:64], "gold": gold, "reason": reason})
