"""The `instruct` verifier: IFEval-style verifiable instructions (design.md §1.4, §3).

Reference fields (the IFEval/IFBench row shape): ``instruction_id_list`` (ids such as
``punctuation:no_comma``), ``kwargs`` (one dict per id, aligned; ``None`` values dropped)
and ``prompt``. The checkers live in ``ifeval_checks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.ifeval_checks import (
    UnsupportedInstruction,
    check_loose,
    check_strict,
    supported_instructions,
)

__all__ = ["InstructVerifier", "strip_reasoning", "supported_instructions"]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def strip_reasoning(completion: str) -> str:
    """The answer part of a completion: the text after the last ``</think>``.

    A completion that opens ``<think>`` and never closes it has no answer and gives "".
    A completion without reasoning tags is returned unchanged.
    """
    if _THINK_CLOSE in completion:
        return completion.rsplit(_THINK_CLOSE, 1)[1]
    if completion.lstrip().startswith(_THINK_OPEN):
        return ""
    return completion


@register_verifier("instruct")
class InstructVerifier:
    """Grades a completion against IFEval-style instructions.

    ``passed``: every supported instruction is followed under IFEval's strict check.
    ``score``: the fraction of supported instructions followed (strict), in [0, 1].
    ``details``: ``strict`` and ``loose`` (one bool per supported instruction, in order),
    ``unsupported`` (ids skipped because no checker exists here), ``instruction_ids``
    (the ids graded, aligned with the bools), and ``reason`` when nothing was gradable.
    """

    name = "instruct"

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Check every instruction of ``reference`` on the completion's answer part.

        Raises:
            KeyError: if ``reference`` lacks ``instruction_id_list``.
            ValueError: if ``kwargs`` is not aligned with the ids, or a kwarg is invalid
                for its instruction (missing, unexpected, or a bad value), naming the id.
        """
        ids = list(reference["instruction_id_list"])
        all_kwargs = reference.get("kwargs") or [{} for _ in ids]
        if len(all_kwargs) != len(ids):
            raise ValueError(f"{len(ids)} instruction ids but {len(all_kwargs)} kwargs dicts")
        prompt = reference.get("prompt") or ""
        response = strip_reasoning(completion)

        graded: list[str] = []
        strict: list[bool] = []
        loose: list[bool] = []
        unsupported: list[str] = []
        for instruction_id, kwargs in zip(ids, all_kwargs, strict=True):
            try:
                strict_ok = check_strict(instruction_id, response, prompt, kwargs)
                loose_ok = check_loose(instruction_id, response, prompt, kwargs)
            except UnsupportedInstruction:
                unsupported.append(instruction_id)
                continue
            except (TypeError, ValueError) as err:
                raise ValueError(f"bad kwargs for {instruction_id!r}: {err}") from err
            graded.append(instruction_id)
            strict.append(bool(strict_ok))
            loose.append(bool(loose_ok))

        details: dict[str, Any] = {
            "strict": strict,
            "loose": loose,
            "unsupported": unsupported,
            "instruction_ids": graded,
        }
        if not graded:
            details["reason"] = "no supported instruction"
            return Verdict(score=0.0, passed=False, details=details)
        return Verdict(score=sum(strict) / len(strict), passed=all(strict), details=details)
