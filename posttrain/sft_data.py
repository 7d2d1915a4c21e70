"""SFT data construction and the hard subset (VibeThinker 3B §2.1; design.md §1.1).

Construction: sample several traces per query from one or more teachers behind an
OpenAI-compatible chat completions endpoint (``posttrain.teacher.TeacherClient``). Where a query has a reliable reference the record's verifier grades each trace; where it has
none, the teachers' extracted answers vote and the majority answer becomes a pseudo-label (it must
win strictly more than ``min_agreement`` of the samples, ties drop the query). Near-duplicate
traces of one query are removed by word n-gram Jaccard, then up to ``max_per_query`` diverse traces
are kept: the point of SFT here is Pass@K, i.e. diversity. Every trace records its provenance.

Hard subset (stage 2): keep traces of at least ``min_trace_tokens`` tokens whose problem a
reference model gets wrong in at least ``min_error_rate`` of ``n`` rollouts (3B: 5K tokens, 0.75 of
8), with a report naming every dropped trace and why.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from posttrain.engines import SamplingParams, open_engine
from posttrain.records import Record
from posttrain.teacher import Teacher, TeacherError
from posttrain.verifiers.base import verify_all

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Pure pieces: n-gram dedupe, diverse selection, majority vote
# ---------------------------------------------------------------------------------------------
def word_ngrams(text: str, n: int = 4) -> frozenset[tuple[str, ...]]:
    """Lower-cased whitespace-word ``n``-grams of ``text``; a text under ``n`` words is one gram."""
    words = text.lower().split()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """``|a & b| / |a | b|`` in [0, 1]; two empty sets give 1.0."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def select_diverse(texts: Sequence[str], max_keep: int, threshold: float = 0.7,
                   n: int = 4) -> tuple[list[int], list[int], list[int]]:
    """Drop near-duplicates, then pick up to ``max_keep`` mutually distant texts.

    A text is a duplicate when its word ``n``-gram Jaccard with an earlier kept text is
    ``>= threshold`` (earlier = lower index, so the first spelling survives). Among the distinct
    rest, selection is farthest-point: start from the first, then repeatedly add the text whose
    highest similarity to those already chosen is lowest (ties: lower index).

    Returns:
        ``(chosen, duplicates, over_cap)``: indices into ``texts``; chosen in selection order.
    """
    grams = [word_ngrams(t, n) for t in texts]
    distinct, duplicates = [], []
    for i in range(len(texts)):
        (duplicates if any(jaccard(grams[i], grams[j]) >= threshold for j in distinct) else distinct).append(i)
    chosen = distinct[:1] if max_keep > 0 else []
    closest = {i: jaccard(grams[i], grams[chosen[0]]) for i in distinct[1:]} if chosen else {}
    while closest and len(chosen) < max_keep:
        pick = min(closest, key=lambda i: (closest[i], i))
        chosen.append(pick)
        del closest[pick]
        closest = {i: max(s, jaccard(grams[i], grams[pick])) for i, s in closest.items()}
    return chosen, duplicates, sorted(closest) if chosen else distinct


@dataclass(frozen=True)
class Vote:
    """Outcome of a majority vote over one query's samples.

    ``label`` is the winning answer (its most frequent spelling) or None, with ``reason`` saying
    why; ``members`` are the sample indices in the winning group; ``agreement = votes / total``
    where ``total`` counts every sample, unanswered ones included.
    """

    label: str | None
    votes: int
    total: int
    members: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def agreement(self) -> float:
        return self.votes / self.total if self.total else 0.0


def majority_vote(answers: Sequence[str | None], min_agreement: float = 0.5,
                  equivalent: Callable[[list[tuple[str, str]]], list[bool]] | None = None) -> Vote:
    """Pseudo-label from the samples' extracted answers (None = no answer).

    Distinct answers are grouped by ``equivalent`` (batched ``(a, b) -> same?`` over all pairs of
    distinct answers, joined transitively; default: string equality). The largest group wins only
    if it is alone at the top (a tie gives no label) and holds strictly more than
    ``min_agreement`` of all samples.
    """
    from posttrain.eval.metrics import group_answers

    total = len(answers)
    if all(a is None for a in answers):
        return Vote(None, 0, total, reason=f"no sample gave an answer (0 of {total})")
    groups = group_answers(answers, equivalent)
    sizes = Counter(g for g in groups if g is not None)
    ranked = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    (top, votes) = ranked[0]
    members = [i for i, g in enumerate(groups) if g == top]
    label = Counter(answers[i] for i in members).most_common(1)[0][0]
    if len(ranked) > 1 and ranked[1][1] == votes:
        other = next(a for a, g in zip(answers, groups) if g == ranked[1][0])
        return Vote(None, votes, total, members,
                    f"tie: {label!r} and {other!r} have {votes} of {total} votes each")
    if votes / total <= min_agreement:
        return Vote(None, votes, total, members, f"no majority: top answer {label!r} has {votes} of {total} "
                                                 f"votes ({votes / total:.2f} <= {min_agreement})")
    return Vote(label, votes, total, members)


# ---------------------------------------------------------------------------------------------
# Traces and their construction
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    """One kept teacher trace: the chat the teacher saw, its completion, and where it came from.

    ``provenance`` holds ``teacher_model``, ``endpoint_host``, ``sample_index``, ``seed``,
    ``temperature``, ``top_p``, ``max_tokens``, ``finish_reason``, ``verifier``, ``label``
    ("verified" or "pseudo_label"), ``pseudo_label`` (the voted answer or None) and ``agreement``
    (fraction of the query's samples, all teachers pooled, that verified or matched the label).
    """

    record_id: str
    domain: str
    messages: list[dict[str, str]]
    completion: str
    provenance: dict[str, Any]

    @property
    def trace_id(self) -> str:
        """``<record id>/<teacher model>/<sample index>``: unique within one construction run."""
        return f"{self.record_id}/{self.provenance['teacher_model']}/{self.provenance['sample_index']}"

    def sft_pair(self) -> dict[str, Any]:
        """The trace as TRL's conversational prompt/completion example (as ``Record.sft_pair``)."""
        return {"prompt": self.messages, "completion": [{"role": "assistant", "content": self.completion}],
                "id": self.record_id}

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (one line of ``traces.jsonl``); ``Trace(**d)`` reads it back."""
        return {"record_id": self.record_id, "domain": self.domain, "messages": self.messages,
                "completion": self.completion, "provenance": self.provenance}


def reference_traces(records: Sequence[Record]) -> list[Trace]:
    """The records' own reference solutions as traces (records without one are skipped), so a
    stage without a teacher goes through the same hard-subset selection. Provenance ``label`` is
    "reference" and ``teacher_model`` the record's source."""
    return [Trace(r.id, r.domain, r.chat(), r.reference.solution,
                  {"teacher_model": r.source, "endpoint_host": None, "sample_index": 0, "label": "reference",
                   "verifier": r.verifier, "pseudo_label": None, "agreement": None})
            for r in records if r.reference.solution]


# Which reference field makes a record's answer reliable, per verifier.
_KEY_FIELD = {"math": "answer", "choice": "answer", "synthetic": "answer", "code": "tests",
              "instruct": "instruction_id_list"}


def needs_pseudo_label(record: Record) -> bool:
    """True when the record has no reliable reference: ``meta["answer_reliable"]`` is False, or its
    verifier's key field (math/choice ``answer``, code ``tests``, ...) is missing or empty."""
    if record.meta.get("answer_reliable") is False:
        return True
    key = _KEY_FIELD.get(record.verifier)
    value = getattr(record.reference, key) if key else record.reference.verifier_fields()
    return not value


def _math_equivalent(pairs: list[tuple[str, str]]) -> list[bool]:
    from posttrain.verifiers.math import judge_answers

    return [reason == "correct" for reason in judge_answers(pairs)]


def answer_extractor(record: Record):
    """``(extract(text) -> answer | None, equivalent)`` for voting on ``record``'s answers, or None
    when its verifier has no extractable answer (only math and choice are supported)."""
    if record.verifier == "math":
        from posttrain.verifiers.math import extract_answer

        return extract_answer, _math_equivalent
    if record.verifier == "choice":
        from posttrain.verifiers.choice import extract_choice, option_labels

        labels = option_labels(record.reference.verifier_fields())
        return (lambda text: extract_choice(text, labels)[0]), None
    return None


def _gather(records: Sequence[Record], teachers: Sequence[Teacher], n: int, sampling: dict) -> list[list[tuple]]:
    """``[len(records)][samples]`` of ``(teacher, TeacherSample)``, all teachers pooled; a record whose
    every teacher failed (after retries) holds its ``TeacherError`` list instead. Fatal errors raise."""
    per_record: list[list] = [[] for _ in records]
    errors: list[list[TeacherError]] = [[] for _ in records]
    for teacher in teachers:
        results = teacher.sample_many([r.chat() for r in records], n, return_exceptions=True, **sampling)
        for i, result in enumerate(results):
            if isinstance(result, TeacherError):
                if not result.retryable:
                    raise result
                errors[i].append(result)
            else:
                per_record[i] += [(teacher, s) for s in result]
    return [samples or errors[i] for i, samples in enumerate(per_record)]


def _judge(records: Sequence[Record], gathered: list[list], min_agreement: float) -> list[tuple]:
    """Per record ``(good sample positions, pseudo label, drop reason)``; reliable references are
    graded in one ``verify_all`` batch, the rest are voted on."""
    rows = [(i, j) for i, r in enumerate(records) if not needs_pseudo_label(r) and gathered[i]
            and not isinstance(gathered[i][0], TeacherError) for j in range(len(gathered[i]))]
    verdicts = verify_all([records[i].verifier for i, _ in rows], [gathered[i][j][1].text for i, j in rows],
                          [records[i].verifier_reference() for i, _ in rows])
    passed: dict[int, list[int]] = defaultdict(list)
    for (i, j), verdict in zip(rows, verdicts):
        if verdict.passed:
            passed[i].append(j)
    out = []
    for i, record in enumerate(records):
        samples = gathered[i]
        if samples and isinstance(samples[0], TeacherError):
            out.append(([], None, f"teacher request failed: {samples[0]}"))
        elif not needs_pseudo_label(record):
            out.append((passed[i], None, None if passed[i] else f"no trace verified (0 of {len(samples)})"))
        elif (extractor := answer_extractor(record)) is None:
            out.append(([], None, f"no reliable reference and no answer to vote on for verifier {record.verifier!r}"))
        else:
            extract, equivalent = extractor
            vote = majority_vote([extract(s.text) for _, s in samples], min_agreement, equivalent)
            out.append((vote.members if vote.label else [], vote.label, vote.reason))
    return out


def build_sft_traces(records: Sequence[Record], client: Teacher | Sequence[Teacher], n_per_query: int, *,
                     max_per_query: int = 4, temperature: float = 1.0, top_p: float = 0.95,
                     max_tokens: int = 4096, seed: int | None = None, min_agreement: float = 0.5,
                     dedupe_jaccard: float = 0.7, ngram: int = 4) -> tuple[list[Trace], dict]:
    """Sample, verify or pseudo-label, dedupe and cap teacher traces per query (3B §2.1).

    Args:
        records: the queries; ``Record.chat()`` is what each teacher sees.
        client: one teacher or several (their samples are pooled per query).
        n_per_query: samples per query from each teacher.
        max_per_query: traces kept per query at most (diverse ones, see ``select_diverse``).
        temperature, top_p, max_tokens, seed: sampling settings sent to the teachers (tokens).
        min_agreement: a pseudo-label needs strictly more than this fraction of the query's samples.
        dedupe_jaccard, ngram: traces of one query with word-``ngram`` Jaccard ``>= dedupe_jaccard``
            are duplicates (0.7 on 4-grams: the same derivation lightly reworded).

    Returns:
        ``(traces, report)``: traces in record order; report ``{"settings", "teachers", "totals",
        "domains": {domain: counts and dropped-query reasons}, "queries": [per query],
        "pseudo_labels": {record id: label}}``.

    Raises:
        TeacherError: for a non-retryable teacher failure (bad key, unknown model, bad request);
            a query whose requests still fail after retries is dropped with that reason instead.
    """
    teachers = [client] if hasattr(client, "sample_many") else list(client)  # type: ignore[arg-type]
    sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    gathered = _gather(records, teachers, n_per_query, sampling)
    judged = _judge(records, gathered, min_agreement)
    traces: list[Trace] = []
    queries, pseudo = [], {}
    for record, samples, (good, label, reason) in zip(records, gathered, judged):
        mode = "pseudo_label" if needs_pseudo_label(record) else "verified"
        failed = bool(samples) and isinstance(samples[0], TeacherError)
        chosen, duplicates, over_cap = select_diverse([samples[j][1].text for j in good], max_per_query,
                                                      dedupe_jaccard, ngram)
        agreement = len(good) / len(samples) if samples and not failed else 0.0
        for k in chosen:
            teacher, sample = samples[good[k]]
            traces.append(Trace(record.id, record.domain, record.chat(), sample.text, {
                "teacher_model": teacher.model, "endpoint_host": teacher.host, "sample_index": sample.index,
                "seed": sample.seed, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "finish_reason": sample.finish_reason, "verifier": record.verifier, "label": mode,
                "pseudo_label": label, "agreement": round(agreement, 4)}))
        if label is not None:
            pseudo[record.id] = label
        queries.append({"record_id": record.id, "domain": record.domain, "mode": mode,
                        "samples": 0 if failed else len(samples), "good": len(good), "duplicates": len(duplicates),
                        "over_cap": len(over_cap), "kept": len(chosen), "pseudo_label": label,
                        "agreement": round(agreement, 4), "dropped": reason})
    report = {"settings": {"n_per_query": n_per_query, "max_per_query": max_per_query, "min_agreement": min_agreement,
                           "dedupe_jaccard": dedupe_jaccard, "ngram": ngram, **sampling},
              "teachers": [{"model": t.model, "host": t.host} for t in teachers],
              "totals": _totals(queries), "domains": _by_domain(queries), "queries": queries, "pseudo_labels": pseudo}
    log.info("SFT data: %d traces from %d of %d queries", len(traces), report["totals"]["queries_kept"], len(records))
    return traces, report


def _totals(queries: list[dict]) -> dict[str, int]:
    keys = ("samples", "good", "duplicates", "over_cap", "kept")
    out = {k: sum(q[k] for q in queries) for k in keys}
    return {"queries": len(queries), "queries_kept": sum(q["kept"] > 0 for q in queries), **out}


def _by_domain(queries: list[dict]) -> dict[str, dict]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for q in queries:
        grouped[q["domain"]].append(q)
    out = {}
    for domain, rows in grouped.items():
        # reasons without their numbers ("no majority: top answer '3' has ..." -> "no majority")
        reasons = Counter(q["dropped"].split(":")[0].split(" (")[0] for q in rows if q["dropped"])
        out[domain] = {**_totals(rows), "pseudo_labelled": sum(q["mode"] == "pseudo_label" for q in rows),
                       "dropped_queries": dict(reasons)}
    return out


# ---------------------------------------------------------------------------------------------
# Hard subset (stage 2)
# ---------------------------------------------------------------------------------------------
def select_hard_subset(traces: Sequence[Trace], error_rates: Mapping[str, float], min_trace_tokens: int,
                       min_error_rate: float, token_count_fn: Callable[[str], int]) -> tuple[list[Trace], dict]:
    """Keep long traces of problems the reference model usually fails (3B §2.1 stage 2).

    A trace is kept when its completion has ``>= min_trace_tokens`` tokens (``token_count_fn``) and
    its record's error rate (``error_rates[record_id]``, in [0, 1]) is ``>= min_error_rate``. With
    ``min_error_rate <= 0`` the rate test is off and missing rates are fine; otherwise a long
    enough trace whose record has no measured rate is dropped (a short one is dropped as short
    only: its problem need not be measured). Pure: no I/O.

    Returns:
        ``(kept traces, report)``; report ``{"min_trace_tokens", "min_error_rate", "traces",
        "kept_count", "dropped_count", "dropped_by_reason", "kept": [...], "dropped": [...]}``, each
        item ``{"trace_id", "record_id", "tokens", "error_rate"}`` (dropped ones add ``"reasons"``).
    """
    kept, kept_rows, dropped_rows = [], [], []
    by_reason: Counter = Counter()
    for trace in traces:
        tokens = int(token_count_fn(trace.completion))
        rate = error_rates.get(trace.record_id)
        reasons = []
        if tokens < min_trace_tokens:
            reasons.append(f"trace too short: {tokens} < {min_trace_tokens} tokens")
            by_reason["trace too short"] += 1
        if min_error_rate > 0 and rate is None:
            if not reasons:  # a short trace's problem need not be measured: it is dropped as short
                reasons.append(f"no reference error rate for record {trace.record_id}")
                by_reason["no reference error rate"] += 1
        elif min_error_rate > 0 and rate < min_error_rate:
            reasons.append(f"reference model solves it: error rate {rate:.2f} < {min_error_rate:.2f}")
            by_reason["reference model solves it"] += 1
        row = {"trace_id": trace.trace_id, "record_id": trace.record_id, "tokens": tokens, "error_rate": rate}
        if reasons:
            dropped_rows.append({**row, "reasons": reasons})
        else:
            kept.append(trace)
            kept_rows.append(row)
    report = {"min_trace_tokens": min_trace_tokens, "min_error_rate": min_error_rate, "traces": len(traces),
              "kept_count": len(kept), "dropped_count": len(dropped_rows), "dropped_by_reason": dict(by_reason),
              "kept": kept_rows, "dropped": dropped_rows}
    log.info("hard subset: kept %d of %d traces; dropped %s", len(kept), len(traces), dict(by_reason))
    return kept, report


def reference_error_rates(records: Sequence[Record], model_dir: Path, n: int, engine: str = "hf",
                          sampling: SamplingParams | None = None, batch_size: int = 32,
                          pseudo_labels: Mapping[str, str] | None = None) -> dict[str, float]:
    """Each problem's error rate under a reference model: ``1 - passed / n`` over ``n`` rollouts.

    Samples through the engine interface (``open_engine(engine, model_dir)``; evaluation settings
    T = 1.0, top_p = 0.95 unless ``sampling`` is given, its ``n`` replaced) and grades with
    ``verify_all``. Records without a reliable reference are graded against
    ``pseudo_labels[record.id]`` (as ``answer``) when given, else skipped (absent from the result,
    so ``select_hard_subset`` drops their traces with that reason).

    Returns:
        ``{record_id: error rate in [0, 1]}``. The engine is closed before returning.
    """
    pseudo_labels = pseudo_labels or {}
    gradeable = [r for r in records if not needs_pseudo_label(r) or r.id in pseudo_labels]
    if len(gradeable) < len(records):
        log.warning("reference error rates: %d records have no reference or pseudo-label; skipped",
                    len(records) - len(gradeable))
    if not gradeable:
        return {}
    params = replace(sampling or SamplingParams(), n=n)
    model = open_engine(engine, model_dir, batch_size=batch_size)
    try:
        groups = model.generate([r.chat() for r in gradeable], params)
    finally:
        model.close()
    refs = [{**r.verifier_reference(), "answer": pseudo_labels[r.id]} if needs_pseudo_label(r)
            else r.verifier_reference() for r in gradeable]
    verdicts = iter(verify_all([r.verifier for r, g in zip(gradeable, groups) for _ in g],
                               [c.text for g in groups for c in g],
                               [ref for ref, g in zip(refs, groups) for _ in g]))
    return {r.id: 1.0 - sum(next(verdicts).passed for _ in g) / len(g) for r, g in zip(gradeable, groups)}
