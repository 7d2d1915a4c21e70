"""Data loaders: every source loads from the real shipped files, bad rows name file/line/field,
hub and S3 roots work, mixtures are deterministic."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from posttrain.data import (
    DataError,
    HubMapping,
    get_source,
    load_mixture,
    load_source,
    make_digit_records,
    register_source,
    registered_sources,
    resolve_data_root,
    skipped_rows,
    subsample,
)
from posttrain.data.prompts import (
    CHOICE_SUFFIX,
    CHOICE_SUFFIX_NUMBERED,
    MATH_SUFFIX,
    choice_prompt,
    gsm8k_solution,
    math_solution,
)
from posttrain.records import Choice, Record

DATA = Path(os.environ.get("POSTTRAIN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"no shipped data at {DATA}")

# Records each source yields from the shipped files; (yielded, skipped) where rows are skipped.
EXPECTED = {
    "aime2024": 30, "aime2025": 30, "aime2026": 30, "hmmt_feb_2025": 30, "imo_answerbench": 400,
    "math500": 500, "gsm8k_test": 1319, "gsm8k_train": 7473, "aime_1983_2023": 975,
    "math_train": (7498, {"empty_answer": 2}),
    "humaneval": 164, "mbpp_test": 500, "mbpp_train": 374, "leetcode": 200, "leetcode_train": 1890,
    "codeforces": 408, "code_contests": 165,
    "codejam": (592, {"interactive": 27, "custom_judge": 80, "no_tests": 33}),
    "codenet": (3222, {"maybe_special_judge": 172}),
    "ifeval": 541, "ifbench": 300,
    "mmlu_pro_stem": 5878, "arc_challenge_train": 1119, "arc_easy_train": 2251, "openbookqa_train": 4957,
    "synthetic_digits": 64, "synthetic_digits_1": 64,
}  # fmt: skip
VERIFIER_DOMAIN = {"math": "math", "code": "code", "choice": "stem", "instruct": "instruct",
                   "synthetic_digits": "synthetic"}  # fmt: skip


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple[list[Record], dict[str, int]]:
    records = load_source(name, DATA)
    return records, skipped_rows(name)


USER_SUPPLIED = {"gpqa_diamond", "livecodebench_v6"}  # not shipped: loaded from a file the user supplies


def test_registry_lists_every_expected_source():
    assert set(registered_sources()) == set(EXPECTED) | USER_SUPPLIED
    assert "mmlu_pro_stem" in registered_sources("eval") and "mmlu_pro_stem" not in registered_sources("train")
    assert "mbpp_train" in registered_sources("train")


def test_register_source_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        register_source("gsm8k_train", files=[], split="train")(lambda root: [])
    with pytest.raises(KeyError, match="unknown data source 'nope'"):
        get_source("nope")


def _check_reference(rec: Record) -> None:
    ref = rec.reference
    if rec.verifier in ("math", "synthetic_digits"):
        assert ref.answer and ref.answer.strip() == ref.answer
    elif rec.verifier == "choice":
        assert ref.answer in {c.label for c in ref.choices}
    elif rec.verifier == "instruct":
        assert len(ref.instruction_id_list) == len(ref.kwargs) > 0
        assert all(v is not None for kw in ref.kwargs for v in kw.values())
    elif rec.verifier == "code":
        tests = ref.tests
        if isinstance(tests, list):
            assert tests and all(set(t) <= {"input", "output", "checker"} and "input" in t for t in tests)
        else:
            assert {"inputs", "outputs"} <= set(tests) or "functional" in tests or "asserts" in tests
        if ref.solution is not None:
            assert ref.solution.startswith("```python\n") and ref.solution.endswith("\n```")
    else:
        raise AssertionError(f"unexpected verifier {rec.verifier}")


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_loads_valid_records(name):
    records, skipped = _load(name)
    want = EXPECTED[name]
    count, want_skipped = want if isinstance(want, tuple) else (want, {})
    assert len(records) == count
    assert skipped == want_skipped
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids), "ids must be unique within a source"
    for rec in records:
        assert Record.model_validate(rec.model_dump()) == rec
        assert rec.id.startswith(f"{name}/") and rec.source == name
        assert VERIFIER_DOMAIN[rec.verifier] == rec.domain
        assert rec.meta["problem"].strip()
        _check_reference(rec)
    if records[0].verifier == "math" and name != "synthetic_digits":
        assert all(r.prompt.endswith("\n\n" + MATH_SUFFIX) for r in records)
    assert _load.__wrapped__(name)[0] == records, "loading twice gives the same records"


@needs_data
def test_counts_match_manifest():
    manifest = {}
    for line in (DATA / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[0].startswith("`") and cells[6].isdigit():
            manifest[cells[0].strip("`")] = int(cells[6])
    for name, want in EXPECTED.items():
        files = get_source(name).files
        if len(files) != 1 or name.startswith("mbpp"):  # MBPP's splits share one file
            continue
        count, skipped = want if isinstance(want, tuple) else (want, {})
        assert manifest[files[0]] == count + sum(skipped.values()), name
    assert EXPECTED["mbpp_train"] + EXPECTED["mbpp_test"] + 90 + 10 == manifest["benchmarks/mbpp.jsonl"]


# Rows whose raw solution does not end in a clean \boxed{answer}.
TRICKY_SOLUTIONS = {
    "math_train/algebra/25040",  # "\\boxed 9"
    "math_train/algebra/24014",  # "\\boxed 2" after an unbalanced-looking formula
    "aime_1983_2023/1983-1-2",  # "\\boxed{015}" for 15
    "aime_1983_2023/2023-1-6",  # "\\boxed{\\textbf{(051) }}"
    "aime_1983_2023/2023-2-0",  # "\\fbox{363}" and credits
}


@needs_data
@pytest.mark.parametrize("name", ["gsm8k_train", "math_train", "aime_1983_2023", "math500", "arc_easy_train",
                                  "mmlu_pro_stem", "synthetic_digits"])  # fmt: skip
def test_reference_solutions_pass_their_verifier(name):
    from posttrain.verifiers import get_verifier

    records = _load(name)[0]
    sample = records[:40] + [r for r in records if r.id in TRICKY_SOLUTIONS]
    verifier = get_verifier(records[0].verifier)
    for rec in sample:
        verdict = verifier.verify(rec.reference.solution, rec.reference.verifier_fields())
        assert verdict.passed, (rec.id, rec.reference.solution[-200:], verdict.details)


@needs_data
def test_record_contents():
    gsm = _load("gsm8k_train")[0][0]
    assert gsm.reference.answer == "72" and "<<" not in gsm.reference.solution
    assert gsm.reference.solution.endswith("The final answer is \\boxed{72}.")
    math = {r.id: r for r in _load("math_train")[0]}["math_train/algebra/0"]
    assert math.meta["type"] == "Algebra" and math.meta["level"] == 5
    aime = _load("aime_1983_2023")[0][1]
    assert aime.reference.answer == "15" and aime.meta["year"] == 1983  # file writes 015
    humaneval = _load("humaneval")[0][0]
    assert humaneval.reference.tests["functional"].rstrip().endswith("check(has_close_elements)")
    mbpp = _load("mbpp_train")[0][0]
    assert mbpp.id == "mbpp_train/601" and "assert max_chain_length" in mbpp.prompt
    from posttrain.data.sources_code import LEETCODE_PREAMBLE

    two_sum = _load("leetcode_train")[0][0]
    assert two_sum.id == "leetcode_train/two-sum" and two_sum.reference.tests["setup"] == LEETCODE_PREAMBLE
    assert _load("leetcode")[0][0].reference.tests["setup"] == LEETCODE_PREAMBLE
    jam = _load("codejam")[0][0]
    assert jam.reference.tests[0]["checker"] == "float_tolerance 1e-6"
    arc = {r.id: r for r in _load("arc_easy_train")[0]}
    numbered = next(r for r in arc.values() if r.reference.choices[0].label == "1")
    assert numbered.prompt.endswith(CHOICE_SUFFIX_NUMBERED)
    ifbench = _load("ifbench")[0][0]
    assert ifbench.reference.kwargs == [{"keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper",
                                         "keyword4": "labyrinth", "keyword5": "paradox"}]  # fmt: skip


# ------------------------------------------------------------------ bad rows


def _copy(tmp_path: Path, rel: str) -> Path:
    dest = tmp_path / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / rel, dest)
    dest.chmod(0o644)
    return dest


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@needs_data
def test_malformed_jsonl_names_file_line_and_field(tmp_path):
    path = _copy(tmp_path, "benchmarks/aime2025.jsonl")
    row = json.loads(path.read_text().splitlines()[2])
    del row["problem"]
    _replace_line(path, 3, json.dumps(row))
    with pytest.raises(DataError) as err:
        load_source("aime2025", tmp_path)
    assert (err.value.path, err.value.row, err.value.field) == (str(path), 3, "problem")
    assert str(err.value) == f"{path}: line 3: field 'problem': missing"

    _replace_line(path, 3, '{"id": "x", "problem": "truncated')
    with pytest.raises(DataError, match=re.escape(f"{path}: line 3: invalid JSON")):
        load_source("aime2025", tmp_path)


@needs_data
def test_malformed_nested_field_is_named(tmp_path):
    path = _copy(tmp_path, "train/stem/ARC-Easy-Train.jsonl")
    row = json.loads(path.read_text().splitlines()[4])
    row["question"]["choices"][1]["label"] = 2
    _replace_line(path, 5, json.dumps(row))
    with pytest.raises(DataError, match=re.escape("line 5: field 'question.choices[1].label': expected a string")):
        load_source("arc_easy_train", tmp_path)
    row["question"]["choices"][1]["label"], row["answerKey"] = "B", "Z"
    _replace_line(path, 5, json.dumps(row))
    with pytest.raises(DataError, match="line 5: field 'answerKey': answer 'Z' is not one of the labels"):
        load_source("arc_easy_train", tmp_path)


def test_missing_file_and_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k_train.jsonl"):
        load_source("gsm8k_train", tmp_path)
    with pytest.raises(ValueError, match="unsupported data root"):
        load_source("gsm8k_train", "gs://bucket/data")
    with pytest.raises(ValueError, match="needs a HubMapping"):
        load_source("gsm8k_train", "hf://some/dataset")


# ------------------------------------------------------------------ roots


def test_resolve_data_root(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_DATA", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert resolve_data_root() == str((repo / ".." / "shared" / "data").resolve())
    monkeypatch.setenv("POSTTRAIN_DATA", "s3://bucket/data")
    assert resolve_data_root() == "s3://bucket/data"
    assert resolve_data_root("/elsewhere") == "/elsewhere"


@needs_data
def test_s3_root_fetches_only_the_needed_files(tmp_path, monkeypatch):
    import posttrain.storage

    fetched = []

    def fake_fetch(uri: str) -> Path:
        fetched.append(uri)
        return DATA / uri.removeprefix("s3://bucket/data/")

    monkeypatch.setattr(posttrain.storage, "fetch", fake_fetch)
    records = load_source("aime2025", "s3://bucket/data/", limit=5)
    assert fetched == ["s3://bucket/data/benchmarks/aime2025.jsonl"] and len(records) == 5

    bad = _copy(tmp_path, "benchmarks/aime2025.jsonl")
    _replace_line(bad, 2, "not json")
    monkeypatch.setattr(posttrain.storage, "fetch", lambda uri: bad)
    with pytest.raises(DataError, match=re.escape("s3://bucket/data/benchmarks/aime2025.jsonl: line 2")):
        load_source("aime2025", "s3://bucket/data")


def test_hf_root_reads_a_local_hub_layout_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "toy" / "data").mkdir(parents=True)
    rows = {"qid": ["a", "b", "c"], "question": ["1+1?", "2+2?", "3+3?"], "final": [2, 4, 6],
            "worked": ["\\boxed{2}", "\\boxed{4}", "\\boxed{6}"]}  # fmt: skip
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "toy/data/train-00000-of-00001.parquet"))
    mapping = {"split": "train", "prompt_field": "question", "answer_field": "final", "domain": "math",
               "verifier": "math", "id_field": "qid", "solution_field": "worked", "template": "math"}  # fmt: skip
    records = load_source("toy", f"hf://{tmp_path / 'toy'}", mapping=mapping)
    assert [r.id for r in records] == ["toy/a", "toy/b", "toy/c"]
    assert records[1].prompt == "2+2?\n\n" + MATH_SUFFIX and records[1].reference.answer == "4"
    assert records[2].reference.solution == "\\boxed{6}" and records[0].meta["problem"] == "1+1?"
    assert len(load_source("toy", f"hf://{tmp_path / 'toy'}", limit=2, mapping=mapping)) == 2

    with pytest.raises(DataError, match=r"row 1: field 'nope': missing"):
        load_source("toy", f"hf://{tmp_path / 'toy'}", mapping={**mapping, "prompt_field": "nope"})
    with pytest.raises(ValueError, match="extra"):
        HubMapping.model_validate({**mapping, "colour": "red"})
    with pytest.raises(ValueError, match="needs more than one reference column"):
        HubMapping.model_validate({**mapping, "verifier": "choice"})


# ------------------------------------------------------------------ subsampling and mixtures


@needs_data
def test_load_mixture_is_deterministic_and_seeded():
    specs = [{"source": "aime2025", "limit": 7}, {"source": "math500", "limit": 20}, {"source": "humaneval"}]
    first = [r.id for r in load_mixture(specs, DATA, seed=3)]
    assert first == [r.id for r in load_mixture(specs, DATA, seed=3)]
    assert len(first) == 7 + 20 + 164
    assert [i.split("/")[0] for i in first] == ["aime2025"] * 7 + ["math500"] * 20 + ["humaneval"] * 164
    assert first != [r.id for r in load_mixture(specs, DATA, seed=4)]
    bigger = {r.id for r in load_source("math500", DATA, limit=30, seed=3)}
    assert {i for i in first if i.startswith("math500/")} <= bigger  # limits nest for one seed
    with pytest.raises(ValueError, match="comes twice"):
        load_mixture([{"source": "aime2025"}, {"source": "aime2025", "limit": 3}], DATA)
    with pytest.raises(ValueError):
        load_mixture([{"source": "aime2025", "weight": 2}], DATA)


def test_subsample_edges():
    records = make_digit_records(10)
    assert subsample(records, None) == records and subsample(records, 99) == records
    assert subsample(records, 0) == []
    picked = subsample(records, 4, seed=1)
    assert len(picked) == 4 and picked == [r for r in records if r in picked]  # original order
    with pytest.raises(ValueError):
        subsample(records, -1)


# ------------------------------------------------------------------ synthetic task and formats


def test_digit_records():
    records = make_digit_records(5, seed=7, length=4)
    assert records == make_digit_records(5, seed=7, length=4) != make_digit_records(5, seed=8, length=4)
    rec = records[0]
    digits = rec.prompt.removeprefix("Repeat the digits: ").split(" ")
    assert len(digits) == 4 and rec.reference.answer == rec.reference.solution == "".join(digits)
    assert (rec.domain, rec.verifier, rec.id) == ("synthetic", "synthetic_digits", "synthetic_digits/7-0")
    assert len(load_source("synthetic_digits", "/nonexistent")) == 64  # reads no file


@pytest.mark.parametrize(
    ("raw", "answer", "want_end"),
    [
        ("so $\\boxed{60}.$\n ~coolmath2017\n ~Lucas", "60", "so $\\boxed{60}.$"),
        ("giving $\\boxed{015}$.", "15", "giving $\\boxed{015}$."),
        ("is $\\boxed 9$.", "9", "is $\\boxed{9}$."),
        ("is \\textbf{(051) }", "51", "\n\nThe final answer is \\boxed{51}."),
        ("no box here", "3", "no box here\n\nThe final answer is \\boxed{3}."),
    ],
)
def test_math_solution(raw, answer, want_end):
    assert math_solution(raw, answer).endswith(want_end)


def test_gsm8k_solution_and_choice_prompt():
    solution, answer = gsm8k_solution("She pays 2 * 540 = <<2*540=1080>>1080.\n#### 1,080")
    assert (solution, answer) == ("She pays 2 * 540 = 1080.\nThe final answer is \\boxed{1080}.", "1080")
    assert gsm8k_solution("no final line") is None
    prompt = choice_prompt("Q?", [Choice(label="A", text="x"), Choice(label="B", text="y")])
    assert prompt == f"Q?\n\nA. x\nB. y\n\n{CHOICE_SUFFIX}"


def test_mixture_where_filters_meta_before_limit():
    records = load_mixture([{"source": "math_train", "limit": 5, "where": {"level": [1]}}], DATA)
    assert len(records) == 5 and all(r.meta["level"] == 1 for r in records)
    with pytest.raises(ValueError, match="matches"):
        load_mixture([{"source": "math_train", "where": {"level": ["Level 1"]}}], DATA)


def test_gpqa_diamond_is_user_supplied(tmp_path):
    import csv

    from posttrain.data.errors import UserFileMissing
    from posttrain.verifiers.base import verify_all

    with pytest.raises(UserFileMissing, match="not be redistributed.*benchmarks/gpqa_diamond.csv"):
        load_source("gpqa_diamond", tmp_path)
    (tmp_path / "benchmarks").mkdir()
    header = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3", "High-level domain"]
    rows = [["rec1", "Which particle is a lepton?", "muon", "proton", "neutron", "pion", "Physics"],
            ["rec2", "What is the pH of pure water at 25 C?", "7", "1", "14", "0", "Chemistry"]]
    with (tmp_path / "benchmarks" / "gpqa_diamond.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    records = load_source("gpqa_diamond", tmp_path)
    assert [r.id for r in records] == ["gpqa_diamond/rec1", "gpqa_diamond/rec2"]
    for record, row in zip(records, rows):
        labels = {c.label: c.text for c in record.reference.choices}
        assert sorted(labels) == ["A", "B", "C", "D"] and labels[record.reference.answer] == row[2]
        gold = verify_all(["choice"], [f"\\boxed{{{record.reference.answer}}}"], [record.verifier_reference()])[0]
        assert gold.passed and record.meta["subdomain"] == row[6]


def test_livecodebench_release_format(tmp_path):
    import base64
    import pickle
    import zlib

    from posttrain.data.errors import UserFileMissing
    from posttrain.verifiers.base import verify_all

    with pytest.raises(UserFileMissing, match="livecodebench_v6.jsonl"):
        load_source("livecodebench_v6", tmp_path)

    def packed(tests):  # the release's encoding of private tests
        return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()

    stdin = {"question_id": "abc300_a", "question_content": "Read two integers and print their sum.",
             "starter_code": "", "platform": "atcoder", "contest_date": "2025-03-01T00:00:00", "difficulty": "easy",
             "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
             "private_test_cases": packed([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]),
             "metadata": "{}"}
    functional = {"question_id": "3300", "question_content": "Return the sum of a and b.",
                  "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
                  "platform": "leetcode", "contest_date": "2024-06-01T00:00:00", "difficulty": "easy",
                  "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
                  "private_test_cases": packed([{"input": "0\n7", "output": "7", "testtype": "functional"}]),
                  "metadata": json.dumps({"func_name": "add"})}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "livecodebench_v6.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (stdin, functional)))
    a, b = load_source("livecodebench_v6", tmp_path)
    assert len(a.reference.tests) == 2 and a.meta["contest_date"].startswith("2025-03")
    good = ["```python\na, b = map(int, input().split())\nprint(a + b)\n```",
            "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"]
    bad = ["```python\nprint(3)\n```", "```python\nclass Solution:\n    def add(self, a, b):\n        return 3\n```"]
    refs = [a.verifier_reference(), b.verifier_reference()]
    assert [v.passed for v in verify_all(["code"] * 2, good, refs)] == [True, True]
    assert [v.passed for v in verify_all(["code"] * 2, bad, refs)] == [False, False]


def test_livecodebench_private_tests_never_unpickle_objects(tmp_path):
    import base64
    import pickle
    import zlib

    from posttrain.data.errors import DataError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]",
           "private_test_cases": base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode(), "metadata": "{}"}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "livecodebench_v6.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="line 1: field 'private_test_cases'"):
        load_source("livecodebench_v6", tmp_path)
