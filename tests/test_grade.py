"""`posttrain grade` library function: order, summary, process pool, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.grade import grade_file

MATH_ROWS = [
    {"id": 1, "completion": r"\boxed{\frac{1}{2}}", "answer": "0.5"},
    {"id": 2, "completion": "no box, just 7", "answer": "7"},
    {"id": 3, "completion": r"<think>hm</think>\boxed{025}", "answer": "25"},
    {"id": 4, "completion": r"\boxed{3}", "answer": "4"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [(r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_math_file_in_order(tmp_path, workers):
    out = tmp_path / "out.jsonl"
    summary = grade_file("math", write_jsonl(tmp_path / "in.jsonl", MATH_ROWS), out, workers=workers)
    assert summary == {"n": 4, "passed": 2, "mean_score": 0.5}
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert [r["passed"] for r in rows] == [True, False, True, False]
    assert rows[1]["details"]["reason"] == "no answer found"
    assert rows[0]["completion"] == MATH_ROWS[0]["completion"] and rows[0]["score"] == 1.0


def test_code_file(tmp_path):
    rows = [
        {"completion": "```python\nprint(int(input()) * 2)\n```", "tests": [{"input": "2", "output": "4"}]},
        {
            "completion": "```python\ndef add(a, b):\n    return a - b\n```",
            "tests": {"asserts": ["assert add(1, 2) == 3"], "setup": ""},
        },
    ]
    out = tmp_path / "out.jsonl"
    summary = grade_file("code", write_jsonl(tmp_path / "in.jsonl", rows), out, workers=1)
    assert summary == {"n": 2, "passed": 1, "mean_score": 0.5}
    assert [r["details"]["verdicts"] for r in read_jsonl(out)] == [["accepted"], ["wrong_answer"]]


def test_empty_file(tmp_path):
    out = tmp_path / "out.jsonl"
    summary = grade_file("choice", write_jsonl(tmp_path / "in.jsonl", []), out, workers=1)
    assert summary == {"n": 0, "passed": 0, "mean_score": 0.0}
    assert out.read_text() == ""


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", r"in\.jsonl:2: not valid JSON"),
        ('["a list"]', r"in\.jsonl:2: expected a JSON object"),
        ('{"answer": "1"}', r"in\.jsonl:2: field 'completion'"),
        ('{"completion": 5, "answer": "1"}', r"in\.jsonl:2: field 'completion'"),
        ('{"completion": "x"}', r"in\.jsonl:2: missing field 'answer'"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, bad_line, message):
    src = write_jsonl(tmp_path / "in.jsonl", [MATH_ROWS[0], bad_line, MATH_ROWS[1]])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=message):
        grade_file("math", src, out, workers=1)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_verifier_rejection_names_line(tmp_path):
    row = {"completion": "x", "answer": "A", "choices": [{"label": "B", "text": "b"}]}
    src = write_jsonl(tmp_path / "in.jsonl", [row])
    with pytest.raises(ValueError, match=r"in\.jsonl:1: .*'answer'"):
        grade_file("choice", src, tmp_path / "out.jsonl", workers=1)


def test_unknown_verifier(tmp_path):
    with pytest.raises(KeyError, match="nope"):
        grade_file("nope", write_jsonl(tmp_path / "in.jsonl", MATH_ROWS), tmp_path / "out.jsonl")
