"""CLR test-time scaling: claim-level reliability voting (3B §3; design.md §1.5).

Per problem: sample K trajectories; for each, a claim-extraction prompt asks the same model for
M decision-relevant claims and the final answer; a verification prompt per claim asks for a 0/1
verdict; the trajectory's reliability is ``r = (mean verdict) ** M``; answers are grouped by
verifier equivalence and the group with the largest sum of ``r`` wins. This is repeated R times
(R disjoint sets of K trajectories) and the mean pass@1 with and without CLR is reported.

The vote (:func:`clr_vote`) and the parsers are pure functions; :func:`run_clr` drives a
generation engine. Prompts are versioned config (``posttrain.config.ClrSpec``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.engines import SamplingParams
from posttrain.eval.metrics import Equivalent, group_answers
from posttrain.records import Record

log = logging.getLogger(__name__)

def reliability(verdicts: Sequence[int | None], m: int) -> float:
    """``r = (mean verdict) ** m`` over a trajectory's claim verdicts (0/1; None counts as 0).

    No claims gives 0: an unverifiable trajectory carries no weight (3B: r = (1/M sum v_j)^M).
    """
    if not verdicts:
        return 0.0
    return (sum(1 for v in verdicts if v) / len(verdicts)) ** m


@dataclass(frozen=True)
class Vote:
    """The outcome of one vote: the winning answer, its group's weight, and every group's weight."""

    answer: str | None
    weight: float
    weights: dict[int, float]


def clr_vote(answers: Sequence[str | None], reliabilities: Sequence[float],
             equivalent: Equivalent | None = None) -> Vote:
    """Reliability-weighted vote: the equivalence group with the largest sum of ``r`` wins.

    Ties go to the group with more members, then to the one that appeared first. Missing
    answers never win. With every ``r`` equal this is the plain majority vote.
    """
    groups = group_answers(answers, equivalent)
    weights: dict[int, float] = {}
    sizes: dict[int, int] = {}
    for g, r in zip(groups, reliabilities, strict=True):
        if g is not None:
            weights[g] = weights.get(g, 0.0) + r
            sizes[g] = sizes.get(g, 0) + 1
    if not weights:
        return Vote(None, 0.0, {})
    best = min(weights, key=lambda g: (-weights[g], -sizes[g], g))
    answer = next(a for a, g in zip(answers, groups) if g == best)
    return Vote(answer, weights[best], weights)


_CLAIM = re.compile(r"^\s*(?:[-*]\s*)?claim\s*\d*\s*[:.)-]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*(.+?)\s*$", re.MULTILINE)
_VERDICT = re.compile(r"verdict\s*[:=]?\s*\**\s*([01])\b", re.IGNORECASE)


def parse_claims(text: str, m: int) -> list[str]:
    """Up to ``m`` claims from an extraction reply: ``Claim i: ...`` lines, else numbered lines."""
    claims = _CLAIM.findall(text) or [c for c in _NUMBERED.findall(text) if not c.lower().startswith("final answer")]
    return [c for c in claims if c][:m]


def parse_verdict(text: str) -> int | None:
    """The 0/1 verdict of a verification reply (``Verdict: 1``; else a lone final 0 or 1), or None."""
    found = _VERDICT.findall(text)
    if found:
        return int(found[-1])
    tail = re.findall(r"\b([01])\b", text.strip()[-20:])
    return int(tail[-1]) if tail else None


def run_clr(engine, records: Sequence[Record], spec, sampling: SamplingParams, seed: int = 0) -> dict:
    """CLR on ``records`` (math or choice verifiers) with one generation engine; pure voting aside.

    Samples ``spec.k * spec.repeats`` trajectories per problem (``sampling``), asks the same
    model for ``spec.claims`` claims per answered trajectory and for a verdict per claim
    (``spec``'s prompts, greedy by default), scores reliabilities, and votes within each of the
    ``repeats`` disjoint sets of K trajectories. Trajectories without an answer get r = 0 and
    cost no extraction.

    Returns ``{"config", "pass_at_1", "clr_pass_at_1", "majority_pass_at_1", "problems",
    "claims_per_trajectory", "verdict_rate", "samples": [per problem and repeat]}``;
    pass@1 without CLR is the mean correctness of single trajectories.
    """
    from dataclasses import replace

    from posttrain.eval.run import answer_key
    from posttrain.verifiers.base import verify_all

    k, repeats, m = spec.k, spec.repeats, spec.claims
    params = replace(sampling, n=k * repeats, seed=seed)
    groups = engine.generate([r.chat() for r in records], params)  # [problems][k * repeats]
    flat = [(i, c.text) for i, g in enumerate(groups) for c in g]
    verdicts = verify_all([records[i].verifier for i, _ in flat], [t for _, t in flat],
                          [records[i].verifier_reference() for i, _ in flat])
    answers = [answer_key(v.details or {}) for v in verdicts]
    judge = replace(sampling, n=1, temperature=spec.claim_temperature, max_new_tokens=spec.claim_max_new_tokens,
                    seed=seed)
    # a trajectory without an answer cannot win a vote: it is not sent for claims or verdicts
    answered = [t for t, a in enumerate(answers) if a is not None]
    extraction = engine.generate([[{"role": "user", "content": spec.claim_prompt.format(
        problem=records[flat[t][0]].prompt, solution=flat[t][1], m=m)}] for t in answered], judge) if answered else []
    claims: list[list[str]] = [[] for _ in flat]
    for t, g in zip(answered, extraction):
        claims[t] = parse_claims(g[0].text, m)
    jobs = [(t, claim) for t, cs in enumerate(claims) for claim in cs]
    replies = engine.generate([[{"role": "user", "content": spec.verify_prompt.format(
        problem=records[flat[t][0]].prompt, claim=claim)}] for t, claim in jobs], judge) if jobs else []
    per_traj: list[list[int | None]] = [[] for _ in flat]
    for (t, _), reply in zip(jobs, replies):
        per_traj[t].append(parse_verdict(reply[0].text))
    rel = [reliability(v, m) for v in per_traj]
    correct = [bool(v.passed) for v in verdicts]
    equivalent = _equivalent_for(records[0]) if records else None
    rows, clr_hits, maj_hits = [], [], []
    offset = 0
    for i, record in enumerate(records):
        n = len(groups[i])
        for rep in range(repeats):
            idx = list(range(offset + rep * k, offset + min(n, (rep + 1) * k)))
            if not idx:
                continue
            ans = [answers[j] for j in idx]
            clr = clr_vote(ans, [rel[j] for j in idx], equivalent)
            maj = clr_vote(ans, [1.0] * len(idx), equivalent)
            clr_ok, maj_ok = (_is_correct(record, a, idx, answers, correct) for a in (clr.answer, maj.answer))
            clr_hits.append(clr_ok)
            maj_hits.append(maj_ok)
            rows.append({"id": record.id, "repeat": rep, "answers": ans, "reliabilities": [rel[j] for j in idx],
                         "clr_answer": clr.answer, "clr_correct": clr_ok, "majority_answer": maj.answer,
                         "majority_correct": maj_ok, "single_correct": [correct[j] for j in idx]})
        offset += n
    verdict_total = sum(len(v) for v in per_traj)
    return {"config": spec.model_dump(), "problems": len(records),
            "pass_at_1": sum(correct) / len(correct) if correct else 0.0,
            "clr_pass_at_1": sum(clr_hits) / len(clr_hits) if clr_hits else 0.0,
            "majority_pass_at_1": sum(maj_hits) / len(maj_hits) if maj_hits else 0.0,
            "claims_per_trajectory": sum(len(claims[t]) for t in answered) / len(answered) if answered else 0.0,
            "verdict_rate": (sum(1 for v in per_traj for x in v if x is not None) / verdict_total
                             if verdict_total else 0.0),
            "samples": rows}


def _equivalent_for(record: Record) -> Equivalent | None:
    if record.verifier == "math":
        from posttrain.verifiers.math import judge_answers

        return lambda pairs: [reason == "correct" for reason in judge_answers(pairs)]
    return None


def _is_correct(record: Record, answer: str | None, idx: list[int], answers: list, correct: list[bool]) -> bool:
    """A voted answer is correct when a trajectory that gave it (or an equal string) verified."""
    if answer is None:
        return False
    return any(correct[j] for j in idx if answers[j] == answer)
