"""Verifiers adapted to TRL reward functions: the same definition of "correct" as evaluation."""

from __future__ import annotations

import json
from typing import Any

from posttrain.verifiers.base import verify_all


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


def verifier_reward(prompts: list, completions: list, reference: list[str], verifier: list[str], **_: Any) -> list[float]:
    """TRL reward function: the verifier score in [0, 1] of each completion, shape ``[batch]``.

    ``reference`` (JSON of the record's verifier fields) and ``verifier`` (registry name) are
    dataset columns that TRL passes through per completion. Graded with
    :func:`posttrain.verifiers.base.verify_all` (batched per verifier, in parallel).
    """
    texts = [completion_text(c) for c in completions]
    verdicts = verify_all(verifier, texts, [json.loads(r) for r in reference])
    return [float(v.score) for v in verdicts]
