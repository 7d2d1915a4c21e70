"""CLR (3B §3): reliability formula, grouping, a vote CLR changes, parsers, and the driver on a
scripted engine (every prompt kind answered), so the whole loop is checked without sampling."""

from __future__ import annotations

import pytest

from posttrain.config import ClrSpec
from posttrain.engines import Completion, SamplingParams
from posttrain.eval.clr import clr_vote, group_answers, parse_claims, parse_verdict, reliability, run_clr
from posttrain.records import Record, Reference


def test_reliability_is_mean_verdict_to_the_m():
    assert reliability([1, 1, 1], 3) == 1.0
    assert reliability([1, 0, 1], 3) == pytest.approx((2 / 3) ** 3)
    assert reliability([1, None], 2) == 0.25  # an unparsed verdict counts as 0
    assert reliability([], 3) == 0.0


def test_grouping_follows_equivalence_transitively():
    same = lambda pairs: [{a, b} in ({"1/2", "0.5"}, {"0.5", ".5"}) for a, b in pairs]  # noqa: E731
    assert group_answers(["1/2", "3", None, "0.5", ".5", "3"], same) == [0, 1, None, 0, 0, 1]
    assert group_answers(["a", "b", "a"]) == [0, 1, 0]


def test_clr_changes_the_majority_answer():
    # five trajectories: "7" three times with weak claims, "12" twice with verified claims
    answers = ["7", "12", "7", "12", "7"]
    m = 3
    rel = [reliability(v, m) for v in ([1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1])]
    majority = clr_vote(answers, [1.0] * 5)
    clr = clr_vote(answers, rel)
    assert majority.answer == "7" and majority.weight == 3
    assert clr.answer == "12"
    assert clr.weights == {0: pytest.approx(3 / 27), 1: pytest.approx(1 + 8 / 27)}


def test_vote_ties_and_missing_answers():
    assert clr_vote([None, None], [1.0, 1.0]).answer is None
    assert clr_vote(["a", "b"], [0.5, 0.5]).answer == "a"  # equal weight and size: first seen
    assert clr_vote(["a", "b", "b"], [1.0, 0.5, 0.5]).answer == "b"  # equal weight: more members


def test_parsers():
    reply = "Claim 1: x = 2 because 2x = 4.\nClaim 2: so x^2 = 4\n- claim 3) done\nFinal answer: \\boxed{4}"
    assert parse_claims(reply, 3) == ["x = 2 because 2x = 4.", "so x^2 = 4", "done"]
    assert parse_claims(reply, 2) == ["x = 2 because 2x = 4.", "so x^2 = 4"]
    assert parse_claims("1. first\n2) second\nFinal answer: 3", 5) == ["first", "second"]
    assert parse_verdict("Looks right. Verdict: 1") == 1 and parse_verdict("verdict = 0.") == 0
    assert parse_verdict("I think it is wrong\n0") == 0 and parse_verdict("unsure") is None


class Scripted:
    """An engine answering trajectories, claim extraction and verification from a script."""

    def __init__(self, trajectories: list[str]):
        self.trajectories = trajectories
        self.calls = []

    def generate(self, prompts, params: SamplingParams):
        self.calls.append((len(prompts), params.n))
        out = []
        for chat in prompts:
            text = chat[-1]["content"]
            if text.startswith("Here is a problem"):
                good = "\\boxed{12}" in text
                reply = ("Claim 1: 3 * 4 = 12\nClaim 2: the total is 12" if good else
                         "Claim 1: 3 + 4 = 7\nClaim 2: the total is 7")
                out.append([Completion(reply + "\nFinal answer: \\boxed{}", 10, "stop")])
            elif text.startswith("Problem:"):
                out.append([Completion("Verdict: 1" if "12" in text else "Verdict: 0", 2, "stop")])
            else:
                out.append([Completion(t, 5, "stop") for t in self.trajectories[:params.n]])
        return out


def test_run_clr_votes_with_model_verified_claims():
    record = Record(id="p/1", domain="math", prompt="What is 3 times 4?", verifier="math",
                    reference=Reference(answer="12"), source="t")
    # per repeat of K = 5: three wrong "7" and two right "12"
    traj = ["so \\boxed{7}", "so \\boxed{12}", "so \\boxed{7}", "so \\boxed{12}", "so \\boxed{7}"] * 2
    spec = ClrSpec(k=5, claims=2, repeats=2)
    engine = Scripted(traj)
    out = run_clr(engine, [record], spec, SamplingParams(max_new_tokens=32))
    assert out["pass_at_1"] == pytest.approx(0.4)
    assert out["majority_pass_at_1"] == 0.0 and out["clr_pass_at_1"] == 1.0
    assert out["claims_per_trajectory"] == 2 and out["verdict_rate"] == 1.0
    assert out["config"]["prompt_version"] == "clr-v1" and out["config"]["k"] == 5
    assert [row["clr_answer"] for row in out["samples"]] == ["12", "12"]
    # one sampling call (K x R), one extraction call, one verification call
    assert engine.calls == [(1, 10), (10, 1), (20, 1)]


def test_trajectories_without_an_answer_are_not_sent_for_claims():
    record = Record(id="p/1", domain="math", prompt="What is 3 times 4?", verifier="math",
                    reference=Reference(answer="12"), source="t")
    engine = Scripted(["so \\boxed{12}", "I am not sure", "so \\boxed{7}"])
    out = run_clr(engine, [record], ClrSpec(k=3, claims=2, repeats=1), SamplingParams(max_new_tokens=32))
    assert engine.calls == [(1, 3), (2, 1), (4, 1)]  # 2 answered trajectories x 2 claims
    assert out["samples"][0]["reliabilities"][1] == 0.0 and out["clr_pass_at_1"] == 1.0
