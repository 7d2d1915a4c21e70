"""Verifiers adapted to TRL reward functions: the same definition of "correct" as evaluation."""

from __future__ import annotations

import json
from typing import Any

from posttrain.verifiers import get_verifier


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


def verifier_reward(prompts: list, completions: list, reference: list[str], verifier: list[str], **_: Any) -> list[float]:
    """TRL reward function: the verifier score in [0, 1] of each completion, shape ``[batch]``.

    ``reference`` (JSON of the record's verifier fields) and ``verifier`` (registry name) are
    dataset columns that TRL passes through per completion.
    """
    cache: dict[str, Any] = {}
    scores = []
    for completion, ref, name in zip(completions, reference, verifier):
        v = cache.setdefault(name, get_verifier(name))
        scores.append(float(v.verify(completion_text(completion), json.loads(ref)).score))
    return scores
