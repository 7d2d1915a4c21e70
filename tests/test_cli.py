"""The command line: grade end to end, and clear errors for bad arguments."""

import json

from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()


def test_grade_math(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"completion": "so \\boxed{\\frac{1}{2}}", "answer": "0.5"}, {"completion": "\\boxed{3}", "answer": "4"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["grade", "--verifier", "math", "--input", str(src), "--output", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["passed"] for g in graded] == [True, False]


def test_run_rejects_unknown_from_stage():
    result = runner.invoke(app, ["run", "--recipe", "recipes/smoke.yaml", "--from", "nosuch"])
    assert result.exit_code != 0
    assert "nosuch" in result.output
