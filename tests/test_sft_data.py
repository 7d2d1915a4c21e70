"""SFT data construction (3B §2.1): teacher client, pseudo-labels, n-gram dedupe, hard subset."""

from __future__ import annotations

import json

import pytest

from posttrain.engines import Completion
from posttrain.records import Choice, Record, Reference
from posttrain.teacher import TeacherError, TeacherSample
from posttrain.sft_data import (
    Trace,
    build_sft_traces,
    jaccard,
    majority_vote,
    needs_pseudo_label,
    reference_error_rates,
    reference_traces,
    select_diverse,
    select_hard_subset,
    word_ngrams,
)

def math_record(rid: str, answer: str | None, **meta) -> Record:
    return Record(id=rid, domain="math", prompt=f"problem {rid}", verifier="math",
                  reference=Reference(answer=answer), source="test", meta=meta)


def trace(rid: str, words: int, index: int = 0) -> Trace:
    return Trace(rid, "math", [{"role": "user", "content": rid}], " ".join(["w"] * words),
                 {"teacher_model": "t", "sample_index": index})


# ---------------------------------------------------------------------------------------------
# Hard subset: each reason, boundaries inclusive
# ---------------------------------------------------------------------------------------------
def test_select_hard_subset_reasons():
    traces = [trace("hard", 10), trace("edge", 5), trace("short", 3), trace("easy", 10), trace("both", 2),
              trace("unmeasured", 10)]
    rates = {"hard": 1.0, "edge": 0.75, "short": 0.875, "easy": 0.25, "both": 0.5}
    kept, report = select_hard_subset(traces, rates, min_trace_tokens=5, min_error_rate=0.75,
                                      token_count_fn=lambda t: len(t.split()))
    assert [t.record_id for t in kept] == ["hard", "edge"]  # 5 tokens and 0.75 are enough
    reasons = {row["record_id"]: row["reasons"] for row in report["dropped"]}
    assert reasons == {
        "short": ["trace too short: 3 < 5 tokens"],
        "easy": ["reference model solves it: error rate 0.25 < 0.75"],
        "both": ["trace too short: 2 < 5 tokens", "reference model solves it: error rate 0.50 < 0.75"],
        "unmeasured": ["no reference error rate for record unmeasured"],
    }
    assert report["dropped_by_reason"] == {"trace too short": 2, "reference model solves it": 2,
                                           "no reference error rate": 1}
    assert (report["traces"], report["kept_count"], report["dropped_count"]) == (6, 2, 4)
    assert report["kept"][0] == {"trace_id": "hard/t/0", "record_id": "hard", "tokens": 10, "error_rate": 1.0}


def test_select_hard_subset_short_trace_needs_no_rate():
    kept, report = select_hard_subset([trace("a", 2)], {}, 5, 0.75, lambda t: len(t.split()))
    assert kept == [] and report["dropped"][0]["reasons"] == ["trace too short: 2 < 5 tokens"]


def test_select_hard_subset_rate_filter_off():
    kept, report = select_hard_subset([trace("a", 4), trace("b", 1)], {}, 2, 0.0, lambda t: len(t.split()))
    assert [t.record_id for t in kept] == ["a"]
    assert report["dropped"][0]["reasons"] == ["trace too short: 1 < 2 tokens"]


# ---------------------------------------------------------------------------------------------
# n-gram dedupe and diverse selection
# ---------------------------------------------------------------------------------------------
BASE = [f"w{i}" for i in range(20)]  # 20 distinct words: 17 four-grams


def text(words):
    return " ".join(words)


@pytest.mark.parametrize("changed, expected", [
    (19, 16 / 18),  # last word changed: 1 gram lost, 1 gained
    (10, 13 / 21),  # a middle word changed: 4 grams lost, 4 gained
])
def test_jaccard_of_word_4grams(changed, expected):
    other = BASE.copy()
    other[changed] = "x"
    assert jaccard(word_ngrams(text(BASE)), word_ngrams(text(other))) == pytest.approx(expected)


def test_ngrams_ignore_case_and_spacing_and_short_texts():
    assert word_ngrams("A b  C d") == word_ngrams("a B c\nD")
    assert word_ngrams("x y") == frozenset([("x", "y")])
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_select_diverse_drops_duplicates_and_prefers_distant_texts():
    near = BASE.copy()
    near[19] = "x"  # Jaccard 0.89 with BASE: a duplicate
    half = BASE[:10] + [f"h{i}" for i in range(10)]  # shares 7 of 17 grams with BASE: 7/27 = 0.26
    far = [f"f{i}" for i in range(20)]  # shares nothing
    texts = [text(BASE), text(near), text(half), text(far)]
    chosen, duplicates, over_cap = select_diverse(texts, max_keep=2, threshold=0.7)
    assert (chosen, duplicates, over_cap) == ([0, 3], [1], [2])
    assert select_diverse(texts, max_keep=10) == ([0, 3, 2], [1], [])
    assert select_diverse(texts, max_keep=4, threshold=0.9) == ([0, 3, 2, 1], [], [])  # 0.89 < 0.9


# ---------------------------------------------------------------------------------------------
# Majority vote
# ---------------------------------------------------------------------------------------------
def test_majority_vote_needs_strictly_more_than_min_agreement():
    vote = majority_vote(["7", "7", "9", "7", None, "7", "7", "9"])  # 5 of 8
    assert (vote.label, vote.votes, vote.total, vote.members) == ("7", 5, 8, [0, 1, 3, 5, 6])
    assert vote.agreement == 0.625 and vote.reason is None
    half = majority_vote(["7", "7", "7", "7", "9", None, None, "8"])  # 4 of 8 = 0.5: not more than half
    assert half.label is None
    assert half.reason == "no majority: top answer '7' has 4 of 8 votes (0.50 <= 0.5)"


def test_majority_vote_ties_and_empty():
    tie = majority_vote(["3", "5", "3", "5", None, None, "1", "2"], min_agreement=0.2)
    assert tie.label is None and tie.reason == "tie: '3' and '5' have 2 of 8 votes each"
    none = majority_vote([None, None])
    assert none.label is None and none.reason == "no sample gave an answer (0 of 2)"


def test_majority_vote_groups_equivalent_answers():
    same = {frozenset({"1/2", "0.5"}), frozenset({"0.5", "\\frac{1}{2}"})}

    def equivalent(pairs):
        return [frozenset(p) in same for p in pairs]

    # 1/2 ~ 0.5 ~ \frac{1}{2} join transitively: 5 of 8; the most frequent spelling is the label
    vote = majority_vote(["1/2", "0.5", "0.5", "\\frac{1}{2}", "2", "3", "0.5", None], 0.5, equivalent)
    assert (vote.label, vote.votes, vote.members) == ("0.5", 5, [0, 1, 2, 3, 6])


def test_math_pseudo_label_uses_the_math_verifier_equivalence():
    from posttrain.sft_data import answer_extractor

    extract, equivalent = answer_extractor(math_record("q", None))
    answers = [extract(t) for t in ["\\boxed{025}", "so \\boxed{25}", "$25$ is it. Answer: 25", "\\boxed{24}"]]
    vote = majority_vote(answers, 0.5, equivalent)
    assert vote.votes == 3 and vote.label in ("025", "25")


def test_needs_pseudo_label():
    assert needs_pseudo_label(math_record("a", None))
    assert needs_pseudo_label(math_record("b", "4", answer_reliable=False))
    assert not needs_pseudo_label(math_record("c", "4"))


# ---------------------------------------------------------------------------------------------
# build_sft_traces with an in-memory teacher
# ---------------------------------------------------------------------------------------------
class FakeTeacher:
    """Canned samples per prompt text; an exception instance fails that prompt."""

    def __init__(self, model, canned, host="fake:1"):
        self.model, self.host, self.canned, self.calls = model, host, canned, []

    def sample_many(self, prompts, n, *, temperature, top_p, max_tokens, seed=None, return_exceptions=False):
        self.calls.append({"n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed})
        out = []
        for messages in prompts:
            canned = self.canned[messages[-1]["content"]]
            if isinstance(canned, TeacherError):
                if not return_exceptions:
                    raise canned
                out.append(canned)
            else:
                out.append([TeacherSample(t, "stop", i, seed) for i, t in enumerate(canned[:n])])
        return out


def derivation(tag: str, answer: str) -> str:
    return f"{tag} " + " ".join(f"{tag}{i}" for i in range(12)) + f" so the answer is \\boxed{{{answer}}}"


def test_build_sft_traces_verifies_votes_dedupes_and_records_provenance():
    records = [math_record("gold", "4"), math_record("open", None), math_record("tied", None),
               math_record("down", "1"), math_record("flagged", "5", answer_reliable=False)]
    canned = {
        "problem gold": [derivation("a", "4"), derivation("a", "4"), derivation("b", "4"), derivation("c", "5"),
                         derivation("d", "4")],  # 4 verify, one a duplicate; cap 2 keeps a and b or d
        "problem open": [derivation("e", "7"), derivation("f", "7"), derivation("g", "9"), derivation("h", "7"),
                         "no answer here"],  # 3 of 5 say 7: pseudo-label 7
        "problem tied": [derivation("i", "1"), derivation("j", "2"), derivation("k", "1"), derivation("l", "2"),
                         "nothing"],
        "problem down": TeacherError("POST http://fake/v1/chat/completions: HTTP 503: busy (after 6 tries)", 503, True),
        "problem flagged": [derivation("m", "6"), derivation("n", "6"), derivation("o", "6"), "x", "y"],
    }
    teacher = FakeTeacher("teacher-a", canned)
    traces, report = build_sft_traces(records, teacher, 5, max_per_query=2, temperature=0.8, max_tokens=64, seed=3)
    assert teacher.calls == [{"n": 5, "temperature": 0.8, "max_tokens": 64, "seed": 3}]
    by_record = {}
    for t in traces:
        by_record.setdefault(t.record_id, []).append(t)
    assert sorted(by_record) == ["flagged", "gold", "open"]
    assert [t.provenance["sample_index"] for t in by_record["gold"]] == [0, 2]
    assert {t.provenance["sample_index"] for t in by_record["open"]} <= {0, 1, 3}
    assert len(by_record["open"]) == 2
    prov = by_record["open"][0].provenance
    assert prov == {"teacher_model": "teacher-a", "endpoint_host": "fake:1", "sample_index": 0, "seed": 3,
                    "temperature": 0.8, "top_p": 0.95, "max_tokens": 64, "finish_reason": "stop",
                    "verifier": "math", "label": "pseudo_label", "pseudo_label": "7", "agreement": 0.6}
    gold = by_record["gold"][0].provenance
    assert (gold["label"], gold["pseudo_label"], gold["agreement"]) == ("verified", None, 0.8)
    assert by_record["flagged"][0].provenance["pseudo_label"] == "6"  # the flag overrides answer 5
    assert by_record["gold"][0].sft_pair() == {
        "prompt": [{"role": "user", "content": "problem gold"}],
        "completion": [{"role": "assistant", "content": derivation("a", "4")}], "id": "gold"}
    assert Trace(**json.loads(json.dumps(by_record["gold"][0].to_json()))) == by_record["gold"][0]

    queries = {q["record_id"]: q for q in report["queries"]}
    assert (queries["gold"]["good"], queries["gold"]["duplicates"], queries["gold"]["over_cap"]) == (4, 1, 1)
    assert queries["tied"]["dropped"] == "tie: '1' and '2' have 2 of 5 votes each"
    assert queries["down"]["dropped"].startswith("teacher request failed: POST http://fake/v1")
    assert report["pseudo_labels"] == {"open": "7", "flagged": "6"}
    assert report["domains"]["math"]["dropped_queries"] == {"tie": 1, "teacher request failed": 1}
    assert report["totals"] == {"queries": 5, "queries_kept": 3, "samples": 20, "good": 10, "duplicates": 1,
                                "over_cap": 3, "kept": 6}


def test_build_sft_traces_pools_teachers_and_raises_fatal_errors():
    records = [math_record("q", None)]
    a = FakeTeacher("a", {"problem q": [derivation("p", "3"), derivation("q", "4")]}, host="h1:8000")
    b = FakeTeacher("b", {"problem q": [derivation("r", "3"), derivation("s", "3")]}, host="h2:8000")
    traces, report = build_sft_traces(records, [a, b], 2, max_per_query=8)
    pooled = [(t.provenance["teacher_model"], t.provenance["sample_index"]) for t in traces]
    assert pooled == [("a", 0), ("b", 0), ("b", 1)]  # farthest-point order; ties by sample position
    assert report["queries"][0]["agreement"] == 0.75
    assert report["teachers"] == [{"model": "a", "host": "h1:8000"}, {"model": "b", "host": "h2:8000"}]
    bad = FakeTeacher("c", {"problem q": TeacherError("HTTP 401: bad key", 401, retryable=False)})
    with pytest.raises(TeacherError, match="401"):
        build_sft_traces(records, bad, 2)


def test_choice_records_are_pseudo_labelled_by_option():
    record = Record(id="mc", domain="stem", prompt="problem mc", verifier="choice", source="test",
                    reference=Reference(choices=[Choice(label="A", text="red"), Choice(label="B", text="blue")]))
    teacher = FakeTeacher("t", {"problem mc": ["The answer is (B)", "Answer: B", "\\boxed{A}"]})
    traces, report = build_sft_traces([record], teacher, 3)
    assert report["pseudo_labels"] == {"mc": "B"} and len(traces) == 2


def test_reference_traces_feed_the_hard_subset():
    with_solution = Record(id="s", domain="math", prompt="p", verifier="math", source="math_train",
                           reference=Reference(answer="1", solution="one two three"))
    (only,) = reference_traces([with_solution, math_record("none", "2")])
    assert (only.trace_id, only.completion, only.provenance["label"]) == ("s/math_train/0", "one two three", "reference")
    assert only.sft_pair() == with_solution.sft_pair("one two three")


# ---------------------------------------------------------------------------------------------
# reference_error_rates with a canned engine
# ---------------------------------------------------------------------------------------------
class CannedEngine:
    name = "canned"

    def __init__(self, texts):
        self.texts, self.closed, self.params = texts, False, None

    def generate(self, prompts, params):
        self.params = params
        return [[Completion(t, 3, "stop") for t in self.texts[p[-1]["content"]][: params.n]] for p in prompts]

    def close(self):
        self.closed = True


def test_reference_error_rates_grades_n_rollouts(monkeypatch, tmp_path):
    engine = CannedEngine({"problem a": ["\\boxed{4}", "\\boxed{5}", "no", "\\boxed{3}"],
                           "problem b": ["\\boxed{7}", "\\boxed{7}", "\\boxed{7}", "\\boxed{2}"]})
    opened = {}

    def fake_open(kind, model_dir, **options):
        opened.update(kind=kind, model_dir=model_dir, **options)
        return engine

    monkeypatch.setattr("posttrain.sft_data.open_engine", fake_open)
    records = [math_record("a", "4"), math_record("b", None), math_record("c", None)]
    rates = reference_error_rates(records, tmp_path, n=4, engine="vllm", pseudo_labels={"b": "7"})
    assert rates == {"a": 0.75, "b": 0.25}  # c has no reference and no pseudo-label: skipped
    assert opened["kind"] == "vllm" and engine.closed and engine.params.n == 4
    assert (engine.params.temperature, engine.params.top_p) == (1.0, 0.95)


@pytest.mark.slow
def test_reference_error_rates_on_tiny_model(tiny_model):
    from posttrain.engines import SamplingParams

    records = [math_record("a", "4"), math_record("b", "12")]
    rates = reference_error_rates(records, tiny_model, n=2, engine="hf", sampling=SamplingParams(max_new_tokens=8))
    assert set(rates) == {"a", "b"} and all(r in (0.0, 0.5, 1.0) for r in rates.values())
