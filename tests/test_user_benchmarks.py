"""A benchmark added with one YAML entry and no code: JSONL and CSV files, default k, clear errors."""

from __future__ import annotations

import json
import uuid

import pytest

from posttrain.data import load_source, registered_sources
from posttrain.data.user_benchmarks import register_user_benchmarks
from posttrain.eval.run import default_k
from posttrain.verifiers.base import verify_all


@pytest.fixture(autouse=True)
def _restore_registry():
    """Entries registered here must not leak into later tests (the registry is process-wide)."""
    from posttrain.data import sources, user_benchmarks

    registered_sources()  # import the built-in sources first
    before, k_before = dict(sources._REGISTRY), dict(user_benchmarks.USER_K)
    yield
    sources._REGISTRY.clear()
    sources._REGISTRY.update(before)
    user_benchmarks.USER_K.clear()
    user_benchmarks.USER_K.update(k_before)


def test_yaml_entries_become_evaluation_sources(tmp_path):
    tag = uuid.uuid4().hex[:6]
    (tmp_path / "alg.jsonl").write_text("".join(json.dumps({"qid": i, "question": f"What is {i} + {i}?",
                                                            "gold": str(2 * i)}) + "\n" for i in range(3)))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "add.csv").write_text("id,text,answer\na,1+1,2\nb,2+3,5\n")
    (tmp_path / "benchmarks.yaml").write_text(f"""
alg_{tag}:
  file: alg.jsonl
  mapping: {{id_field: qid, prompt_field: question, answer_field: gold, domain: math, verifier: math, template: math}}
  k: 16
add_{tag}:
  file: data/add.csv
  mapping: {{id_field: id, prompt_field: text, answer_field: answer, domain: math, verifier: math}}
""")
    assert register_user_benchmarks(tmp_path / "benchmarks.yaml") == [f"alg_{tag}", f"add_{tag}"]
    assert {f"alg_{tag}", f"add_{tag}"} <= set(registered_sources("eval"))
    records = load_source(f"alg_{tag}", tmp_path)
    assert [r.id for r in records] == [f"alg_{tag}/0", f"alg_{tag}/1", f"alg_{tag}/2"]
    assert records[1].prompt.startswith("What is 1 + 1?") and "\\boxed{}" in records[1].prompt  # the math template
    gold = verify_all(["math"] * 3, [f"\\boxed{{{r.reference.answer}}}" for r in records],
                      [r.verifier_reference() for r in records])
    assert all(v.passed for v in gold)
    assert default_k(f"alg_{tag}", records) == 16  # the entry's k
    csv_records = load_source(f"add_{tag}", tmp_path)
    assert [r.reference.answer for r in csv_records] == ["2", "5"]
    assert default_k(f"add_{tag}", csv_records) == 64  # math without its own k: the report's default


def test_bad_entries_name_the_file_and_the_entry(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("mine:\n  file: x.jsonl\n  mapping: {id_field: id, prompt_field: q, answer_field: a, "
                   "domain: math, verifier: math}\n  kk: 3\n")
    with pytest.raises(ValueError, match=r"b.yaml: benchmark 'mine': kk"):
        register_user_benchmarks(bad)
    bad.write_text("aime2025:\n  file: x.jsonl\n  mapping: {id_field: id, prompt_field: q, answer_field: a, "
                   "domain: math, verifier: math}\n")
    with pytest.raises(ValueError, match="benchmark 'aime2025'.*already registered"):
        register_user_benchmarks(bad)
    tag = uuid.uuid4().hex[:6]
    bad.write_text(f"missing_{tag}:\n  file: nowhere.jsonl\n  mapping: {{id_field: id, prompt_field: q, "
                   "answer_field: a, domain: math, verifier: math}\n")
    register_user_benchmarks(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_source(f"missing_{tag}", tmp_path)
