"""Evaluation metrics against hand-computed values."""

import math

import pytest

from posttrain.eval.metrics import avg_at_k, majority_correct, pass_at_k, pass_k_values, stderr_over_problems, summarise


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 0, 1, 0.0),
    (4, 4, 1, 1.0),
    (4, 1, 1, 0.25),
    (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),        # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
    (64, 1, 8, 8 / 64),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_and_stderr():
    correct = [[True, False, False, False], [True, True, True, True]]  # per-problem means 0.25, 1.0
    assert avg_at_k(correct) == pytest.approx(0.625)
    # sample std of (0.25, 1.0) = 0.53033; / sqrt(2)
    assert stderr_over_problems(correct) == pytest.approx(math.sqrt(((0.375**2) * 2) / 1 / 2))


def test_majority():
    assert majority_correct(["5", "5", "7"], [True, True, False])
    assert not majority_correct(["7", "5", "7"], [False, True, False])
    assert majority_correct(["5", "7"], [True, False])  # tie: first seen wins
    assert not majority_correct([None, None], [False, False])


def test_summarise_keys():
    out = summarise([[True, False, False, False]], [["1", "2", "3", "4"]])
    assert set(out) >= {"avg_at_4", "pass_at_1", "pass_at_2", "pass_at_4", "maj_at_4", "stderr"}
    assert out["pass_at_1"] == pytest.approx(0.25)
    assert pass_k_values(8) == [1, 2, 4, 8]
    assert pass_k_values(6) == [1, 2, 4, 6]


def test_instruction_benchmark_reports_ifeval_accuracies(data_root, tmp_path):
    """IFEval rows carry IFEval's four accuracies; prompt-level strict accuracy is avg@k."""
    from posttrain.config import BenchmarkSpec, SamplingSpec
    from posttrain.engines import Completion
    from posttrain.eval.run import format_table, run_benchmark

    class Echo:  # a stand-in engine: answers every prompt with the same two responses
        def generate(self, prompts, params):
            return [[Completion("all lowercase, no title.", 5, "stop"), Completion("SHOUTING ONLY", 2, "stop")]
                    for _ in prompts]

    figures = run_benchmark(Echo(), BenchmarkSpec(name="ifeval", limit=6, k=2), SamplingSpec(), str(data_root),
                            tmp_path, seed=0)
    assert figures["prompt_strict"] == pytest.approx(figures["avg_at_2"])
    assert 0 <= figures["instruction_strict"] <= figures["instruction_loose"] <= 1
    table = format_table({"ifeval": figures})
    assert "instruction strict" in table and f"{figures['instruction_strict']:.3f}" in table


def test_report_rows_carry_the_reference_scores(tmp_path):
    from posttrain.eval.report import length_histogram_png, pass_at_k_png, table_rows

    fig = {"k": 4, "problems": 2, "avg_at_4": 0.5, "stderr": 0.1, "pass_at_1": 0.5, "pass_at_2": 0.75,
           "pass_at_4": 1.0, "maj_at_4": 0.5}
    rows = table_rows({"aime2025": fig, "ifeval (distill)": fig, "math500": fig})
    assert rows[0]["vibethinker_3b_pass@1_%"] == 91.4 and rows[0]["vibethinker_3b_clr_%"] == 96.7
    assert rows[1]["vibethinker_3b_pass@1_%"] == 93.4  # a baseline row takes its benchmark's reference
    assert rows[2]["vibethinker_3b_pass@1_%"] is None and rows[2]["pass@k"] == 1.0
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "aime2025.jsonl").write_text('{"tokens": 5}\n{"tokens": 9}\n')
    for png in (pass_at_k_png({"aime2025": fig}, tmp_path / "p.png"),
                length_histogram_png(tmp_path / "samples", tmp_path / "l.png")):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_default_samples_per_problem_follow_the_report():
    from posttrain.eval.run import default_k
    from posttrain.records import Record

    def recs(verifier):
        return [Record(id="x/1", domain="math", prompt="p", verifier=verifier, reference={"answer": "1"}, source="x")]

    assert default_k("aime2025", recs("math")) == 64 and default_k("imo_answerbench", recs("math")) == 16
    assert default_k("gpqa_diamond", recs("choice")) == 16 and default_k("humaneval", recs("code")) == 8
    assert default_k("ifeval", recs("instruct")) == 4


def test_time_split_keeps_problems_after_the_cutoff(data_root):
    from posttrain.data import load_source
    from posttrain.eval.run import after_cutoff

    aime = load_source("aime2024", data_root) + load_source("aime2025", data_root)
    kept = after_cutoff(aime, "2024-06-30", "aime")
    assert len(kept) == 30 and {str(r.meta["year"]) for r in kept} == {"2025"}  # year-only: January 1
    with pytest.raises(ValueError, match="no problem dated after 2025-01-01"):
        after_cutoff(aime, "2025-01-01", "aime")
    with pytest.raises(ValueError, match="math500: 500 records carry no date"):
        after_cutoff(load_source("math500", data_root), "2020-01-01", "math500")
    with pytest.raises(ValueError, match="ISO date"):
        after_cutoff(aime, "last year", "aime")
