"""The `instruct` verifier: IFEval and IFBench verifiable instructions (design.md §1.4, §3).

Reference fields (the IFEval/IFBench row shape): ``instruction_id_list`` (ids such as
``punctuation:no_comma`` or ``count:pronouns``), ``kwargs`` (one dict per id, aligned;
``None`` values dropped) and ``prompt``. The checkers are the reference ones, run offline
(``instruction_checkers``); strict and loose follow IFEval's ``evaluation_lib``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.instruction_checkers import (
    CHECKERS,
    UnsupportedInstruction,
    build_checker,
    follows,
    loose_variants,
)

__all__ = [
    "InstructVerifier",
    "instruction_accuracies",
    "strip_reasoning",
    "supported_instructions",
]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def supported_instructions() -> frozenset[str]:
    """Every instruction id the verifier checks: IFEval's 25 and IFBench's 58."""
    return frozenset(CHECKERS)


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
    """Grades a completion against IFEval/IFBench instructions.

    ``passed``: every instruction is followed under the strict check.
    ``score``: the fraction of instructions followed under the strict check, in [0, 1].
    ``details``: ``strict`` and ``loose`` (one bool per graded instruction, in order),
    ``instruction_ids`` (the ids graded, aligned with the bools), ``unsupported`` (ids
    that are neither IFEval's nor IFBench's, skipped), ``errors`` (id: exception, where a
    reference checker crashed; that instruction counts as not followed) and ``reason``
    when nothing was gradable.
    """

    name = "instruct"

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Check every instruction of ``reference`` on the completion's answer part.

        Raises:
            KeyError: if ``reference`` lacks ``instruction_id_list``.
            ValueError: if ``kwargs`` is not aligned with the ids, or a kwarg is missing or
                unexpected for its instruction (naming the id).
        """
        ids = list(reference["instruction_id_list"])
        all_kwargs = reference.get("kwargs") or [{} for _ in ids]
        if len(all_kwargs) != len(ids):
            raise ValueError(f"{len(ids)} instruction ids but {len(all_kwargs)} kwargs dicts")
        prompt = reference.get("prompt") or ""
        response = strip_reasoning(completion)
        variants = loose_variants(response)

        graded: list[str] = []
        strict: list[bool] = []
        loose: list[bool] = []
        unsupported: list[str] = []
        errors: list[str] = []
        for instruction_id, kwargs in zip(ids, all_kwargs, strict=True):
            try:
                checker = build_checker(instruction_id, kwargs, prompt)
            except UnsupportedInstruction:
                unsupported.append(instruction_id)
                continue
            strict_ok, error = follows(checker, response)
            loose_ok = strict_ok or any(follows(checker, v)[0] for v in variants[1:])
            graded.append(instruction_id)
            strict.append(strict_ok)
            loose.append(loose_ok)
            if error:
                errors.append(f"{instruction_id}: {error}")

        details: dict[str, Any] = {
            "strict": strict,
            "loose": loose,
            "instruction_ids": graded,
            "unsupported": unsupported,
            "errors": errors,
        }
        if not graded:
            details["reason"] = "no supported instruction"
            return Verdict(score=0.0, passed=False, details=details)
        return Verdict(score=sum(strict) / len(strict), passed=all(strict), details=details)


def instruction_accuracies(verdicts: Iterable[Verdict | Mapping[str, Any]]) -> dict[str, float]:
    """IFEval's four accuracies over graded prompts (Zhou et al. 2023, §3; ``print_report``).

    ``verdicts``: one per prompt, a ``Verdict`` of this verifier or its ``details`` mapping
    (``strict`` and ``loose`` bool lists). Returns fractions in [0, 1]:
    ``prompt_strict`` / ``prompt_loose`` (prompts whose instructions are all followed) and
    ``instruction_strict`` / ``instruction_loose`` (instructions followed, pooled over all
    prompts). A prompt with no graded instruction counts as not followed.

    Raises:
        ValueError: if ``verdicts`` is empty.
    """
    prompts = prompts_strict = prompts_loose = 0
    instructions = followed_strict = followed_loose = 0
    for verdict in verdicts:
        details = verdict.details if isinstance(verdict, Verdict) else verdict
        strict, loose = list(details["strict"]), list(details["loose"])
        prompts += 1
        prompts_strict += bool(strict) and all(strict)
        prompts_loose += bool(loose) and all(loose)
        instructions += len(strict)
        followed_strict += sum(strict)
        followed_loose += sum(loose)
    if not prompts:
        raise ValueError("no verdicts to summarise")
    return {
        "prompt_strict": prompts_strict / prompts,
        "prompt_loose": prompts_loose / prompts,
        "instruction_strict": followed_strict / instructions if instructions else 0.0,
        "instruction_loose": followed_loose / instructions if instructions else 0.0,
    }
