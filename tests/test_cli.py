"""The command line: grade end to end, and clear errors for bad arguments."""

import json

import pytest

from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()


# One passing and one failing line per verifier, in the shapes design.md §3 gives users.
GRADE_ROWS = {
    "math": [
        {"completion": "<think>half</think> so \\boxed{\\frac{1}{2}}", "answer": "0.5"},
        {"completion": "\\boxed{3}", "answer": "4"},
    ],
    "code": [
        {"completion": "```python\nprint(sum(map(int, input().split())))\n```",
         "tests": [{"input": "1 2", "output": "3"}, {"input": "5 5", "output": "10"}]},
        {"completion": "```python\ndef add(a, b):\n    return a - b\n```",
         "tests": {"asserts": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "setup": ""}},
    ],
    "instruct": [
        {"completion": "hello world, all in lower case.", "prompt": "Say hello in lower case.",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"completion": "Hello, World.", "prompt": "Say hello in lower case, no commas.",
         "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]},
    ],
    "choice": [
        {"completion": "The answer is (B).", "answer": "B",
         "choices": [{"label": "A", "text": "red"}, {"label": "B", "text": "blue"}]},
        {"completion": "\\boxed{C}", "answer": "J", "options": [f"option {i}" for i in range(10)]},
    ],
}  # fmt: skip


@pytest.mark.parametrize("verifier", sorted(GRADE_ROWS))
def test_grade_every_verifier(tmp_path, verifier):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in GRADE_ROWS[verifier]))
    out = tmp_path / "out.jsonl"
    args = ["grade", "--verifier", verifier, "--input", str(src), "--output", str(out), "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["passed"] for g in graded] == [True, False]
    assert graded[0]["score"] == 1.0 and graded[1]["score"] < 1.0
    assert all(g["completion"] == r["completion"] for g, r in zip(graded, GRADE_ROWS[verifier]))
    if verifier == "code":
        assert graded[1]["details"]["verdicts"] == ["wrong_answer", "accepted"] and graded[1]["score"] == 0.5
    if verifier == "instruct":
        assert graded[1]["details"]["strict"] == [False, False] and graded[1]["score"] == 0.0


def test_run_rejects_unknown_from_stage():
    result = runner.invoke(app, ["run", "--recipe", "recipes/smoke.yaml", "--from", "nosuch"])
    assert result.exit_code != 0
    assert "nosuch" in result.output
