"""Verifiers adapted to TRL reward functions: the same definition of "correct" as evaluation."""

from __future__ import annotations

import json
import re
from typing import Any

from posttrain.verifiers.base import verify_all


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


def verifier_reward(prompts: list, completions: list, reference: list[str], verifier: list[str],
                    reward_mode: list[str] | None = None, **_: Any) -> list[float]:
    """TRL reward function: the verifier score in [0, 1] of each completion, shape ``[batch]``.

    ``reference`` (JSON of the record's verifier fields) and ``verifier`` (registry name) are
    dataset columns that TRL passes through per completion; so is the optional ``reward_mode``:
    ``partial`` (default) rewards the verdict's score (e.g. the fraction of instruction
    constraints followed), ``all`` rewards 1 only for a passed verdict. Graded with
    :func:`posttrain.verifiers.base.verify_all` (batched per verifier, in parallel).
    """
    texts = [completion_text(c) for c in completions]
    verdicts = verify_all(verifier, texts, [json.loads(r) for r in reference])
    modes = reward_mode or ["partial"] * len(verdicts)
    return [float(v.passed) if mode == "all" else float(v.score) for v, mode in zip(verdicts, modes)]


_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_judge_score(text: str) -> float | None:
    """The last ``Score: N`` (0-10) in a judge's reply as N / 10 in [0, 1]; None when absent or out of range."""
    found = _SCORE.findall(text)
    if not found or not 0 <= float(found[-1]) <= 10:
        return None
    return float(found[-1]) / 10


def judge_reward(client, rubric: str, max_tokens: int = 16):
    """A TRL reward function scoring each completion with a judge model (rubric reward, 3B §2.4).

    ``client`` samples chats (``posttrain.teacher.TeacherClient``: any OpenAI-compatible API,
    e.g. vLLM's server); ``rubric`` is formatted with ``prompt`` (the user turn) and ``response``.
    Greedy (temperature 0), one sample. A failed request or an unparsable reply gives None, which
    TRL leaves out of the weighted sum (training goes on with the verifier reward alone).
    """
    from posttrain.teacher import TeacherError

    def reward(prompts: list, completions: list, **_: Any) -> list[float | None]:
        chats = [[{"role": "user", "content": rubric.format(prompt=p if isinstance(p, str) else p[-1]["content"],
                                                             response=completion_text(c))}]
                 for p, c in zip(prompts, completions)]
        replies = client.sample_many(chats, 1, temperature=0.0, top_p=1.0, max_tokens=max_tokens,
                                     return_exceptions=True)
        return [None if isinstance(r, TeacherError) or not r else parse_judge_score(r[0].text) for r in replies]

    reward.__name__ = "judge_reward"
    return reward
