"""Bad input of every kind fails with an error naming the file, the row and the field, and leaves
everything stored as it was. This file: malformed JSONL, missing and ill-typed fields, empty data,
recipe typos, unknown sources / benchmarks / verifiers. Models, checkpoints and odd LaTeX in
answers: test_bad_input_models.py."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.config import RecipeError, load_recipe
from posttrain.data import DataError, UnknownSourceError, load_mixture, load_source

from bad_input import DATA, SMOKE, copy_data, edit_line, needs_data

pytestmark = pytest.mark.faults


def one_line(text: str) -> str:
    """CLI output with rich's panel borders and line wrapping removed."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


# ================================================================== data files


@needs_data
def test_malformed_json_line(tmp_path):
    path = copy_data(tmp_path, "train/gsm8k_train.jsonl")
    edit_line(path, 7, '{"question": "How many?", "answer": "4\\n#### 4"')  # the closing brace is lost
    with pytest.raises(DataError) as e:
        load_source("gsm8k_train", tmp_path)
    assert (e.value.path, e.value.row, e.value.unit, e.value.field) == (str(path), 7, "line", None)
    assert str(e.value).startswith(f"{path}: line 7: invalid JSON")


@needs_data
@pytest.mark.parametrize("rel, source, lineno, edit, field, problem", [
    ("train/gsm8k_train.jsonl", "gsm8k_train", 3, lambda r: r.pop("answer"), "answer", "missing"),
    ("train/gsm8k_train.jsonl", "gsm8k_train", 4, lambda r: r.update(question=["a", "list"]), "question",
     "expected a string, got list"),
    ("train/gsm8k_train.jsonl", "gsm8k_train", 5, lambda r: r.update(question=12), "question",
     "expected a string, got int"),
    ("train/gsm8k_train.jsonl", "gsm8k_train", 6, lambda r: r.update(answer="no final line"), "answer",
     "no '#### <answer>' line"),
    ("benchmarks/aime2025.jsonl", "aime2025", 2, lambda r: r.update(answer=None), "answer",
     "expected a string, got NoneType"),
    ("benchmarks/aime2025.jsonl", "aime2025", 9, lambda r: r.update(problem="   "), "problem", "empty"),
    ("benchmarks/math500.jsonl", "math500", 11, lambda r: r.update(level="hard"), "level", "expected 'Level N'"),
    ("benchmarks/aime2025.jsonl", "aime2025", 4, lambda r: r.update(answer=float("nan")), "answer", "finite"),
    ("train/stem/ARC-Easy-Train.jsonl", "arc_easy_train", 8, lambda r: r["question"].update(choices="ABCD"),
     "question.choices", "expected a non-empty list of objects"),
])  # fmt: skip
def test_bad_field_names_file_line_and_field(tmp_path, rel, source, lineno, edit, field, problem):
    path = copy_data(tmp_path, rel)
    edit_line(path, lineno, edit)
    with pytest.raises(DataError) as e:
        load_source(source, tmp_path)
    assert (e.value.path, e.value.row, e.value.field) == (str(path), lineno, field)
    assert str(e.value).startswith(f"{path}: line {lineno}: field {field!r}: ") and problem in str(e.value)


@needs_data
def test_json_array_and_csv_rows_are_numbered_by_item_and_data_row(tmp_path):
    path = copy_data(tmp_path, "train/aime_1983_2023.json")
    rows = json.loads(path.read_text())
    rows[41]["year"] = "nineteen eighty"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=re.escape(f"{path}: item 42: field 'year': expected an integer")):
        load_source("aime_1983_2023", tmp_path)

    path = copy_data(tmp_path, "benchmarks/imo_answerbench_v2.csv")
    path.write_text("Problem ID,Problem,Short Answer,Category,Subcategory,Source\n"
                    'a-1,"What is 1+1?",2,Algebra,x,y\n'
                    'a-2,"Multi-line\nproblem"\n')  # row 2 stops after two cells
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: field 'Short Answer': missing")):
        load_source("imo_answerbench", tmp_path)


@needs_data
def test_line_numbers_are_physical_lines(tmp_path):
    """Blank lines, CRLF endings and a byte order mark do not shift the reported line."""
    path = copy_data(tmp_path, "benchmarks/aime2025.jsonl")
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({**json.loads(lines[4]), "id": 5})
    path.write_bytes(("\ufeff" + "\r\n".join(lines[:2] + ["", "  "] + lines[2:]) + "\r\n").encode())
    with pytest.raises(DataError, match=re.escape(f"{path}: line 7: field 'id': expected a string, got int")):
        load_source("aime2025", tmp_path)


@needs_data
def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = copy_data(tmp_path, "benchmarks/aime2025.jsonl")
    raw = path.read_bytes().split(b"\n")
    raw[3] = raw[3].replace(b"Find", b"F\xffind", 1)
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(DataError, match=re.escape(f"{path}: line 4: not valid UTF-8 (byte 0xff")):
        load_source("aime2025", tmp_path)


@needs_data
def test_truncated_gzip_names_the_file(tmp_path):
    path = copy_data(tmp_path, "benchmarks/humaneval.jsonl.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        load_source("humaneval", tmp_path)
    assert e.value.path == str(path) and e.value.row is not None
    assert "corrupt or truncated gzip file" in str(e.value)
    # A line cut in the middle is reported as what it is, with its number.
    text = gzip.decompress(raw).decode()
    path.write_bytes(gzip.compress(text[: len(text) // 2].encode()))
    with pytest.raises(DataError, match=re.escape(f"{path}: line ")):
        load_source("humaneval", tmp_path)


@needs_data
def test_empty_file_and_empty_mixture_name_file_and_sources(tmp_path):
    path = copy_data(tmp_path, "train/gsm8k_train.jsonl")
    path.write_text("")
    with pytest.raises(DataError, match=re.escape(f"{path}: no records for source 'gsm8k_train'")):
        load_source("gsm8k_train", tmp_path)
    path.write_text("\n\n   \n")
    with pytest.raises(DataError, match="no records"):
        load_mixture([{"source": "gsm8k_train", "limit": 4}], tmp_path)
    with pytest.raises(DataError) as e:
        load_mixture([{"source": "aime2025", "limit": 0}, {"source": "math500", "limit": 0}], DATA)
    assert str(e.value) == f"{DATA}: the mixture of aime2025 (limit 0), math500 (limit 0) holds no records"


@needs_data
def test_duplicate_ids_name_the_file_and_the_id(tmp_path):
    path = copy_data(tmp_path, "benchmarks/aime2025.jsonl")
    first = json.loads(path.read_text().splitlines()[0])["id"]
    edit_line(path, 6, lambda r: r.update(id=first))
    with pytest.raises(DataError, match=re.escape(f"{path}: field 'id': duplicate record id 'aime2025/{first}'")):
        load_source("aime2025", tmp_path)


def test_unknown_source_lists_the_registered_ones():
    with pytest.raises(UnknownSourceError) as e:
        load_mixture([{"source": "gsm8k_trian", "limit": 3}])
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(e.value).startswith("unknown data source 'gsm8k_trian' (did you mean 'gsm8k_train'?); registered: ")
    assert "aime2025, aime2026" in str(e.value)


# ================================================================== recipes


def write_recipe(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = SMOKE.read_text()
    assert old in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(old, new, count))
    return path


def recipe_error(path, overrides=None) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    assert str(e.value).startswith(f"{path}: ")
    return str(e.value)


def test_recipe_typo_names_file_field_and_suggestion(tmp_path):
    path = write_recipe(tmp_path, "  group_size: 4\n  max_completion_length: 12\n  train: {max_steps: 2, "
                        "learning_rate: 1.0e-3, per_device_batch_size: 8}\n  efficiency",
                        "  group_sise: 4\n  max_completion_length: 12\n  train: {max_steps: 2, "
                        "learning_rate: 1.0e-3, per_device_batch_size: 8}\n  efficiency")
    assert "\n  rl_math.group_sise: unknown field (did you mean 'group_size'?)" in recipe_error(path)
    path = write_recipe(tmp_path, "{source: synthetic_digits_1, limit: 32}", "{source: synthetic_digits_1, limt: 32}")
    assert "\n  sft_stage1.data[1].limt: unknown field (did you mean 'limit'?)" in recipe_error(path)
    path = write_recipe(tmp_path, "name: smoke", "name: smoke\nfrobnicate: true")
    assert "\n  frobnicate: unknown field; fields here: data_root, decontamination, distill" in recipe_error(path)


def test_recipe_wrong_type_names_field_expected_type_and_value(tmp_path):
    path = write_recipe(tmp_path, "group_size: 4", "group_size: four")
    assert ("rl_math.group_size: Input should be a valid integer, unable to parse string as an integer "
            "(got 'four')") in recipe_error(path)
    stage2_train = "  train: {max_steps: 2, learning_rate: 1.0e-3, per_device_batch_size: 4}\n  max_length: 128"
    path = write_recipe(tmp_path, stage2_train, "  train: [2, 1.0e-3]\n  max_length: 128")
    assert "sft_stage2.train: Input should be a valid dictionary or instance of TrainSpec (got [2, 0.001])" in \
        recipe_error(path)
    assert "sft_stage1.data[0].limit: Input should be greater than or equal to 0 (got -1) (set by --set " \
        "sft_stage1.data.0.limit=-1)" in recipe_error(SMOKE, ["sft_stage1.data.0.limit=-1"])


@pytest.mark.parametrize("override, message", [
    ("rl_mat.train.max_steps=3", "invalid recipe:\n  rl_mat: unknown field (did you mean 'rl_math'?) "
                                 "(set by --set rl_mat.train.max_steps=3)"),
    ("rl_math.train.max_stepz=3", "rl_math.train.max_stepz: unknown field (did you mean 'max_steps'?)"),
    ("rl_math.group_size.x=3", "--set rl_math.group_size.x: 'rl_math.group_size' is not a section of the recipe"),
    ("sft_stage1.data.9.limit=3", "--set sft_stage1.data.9.limit: 'sft_stage1.data' is a list of 4 items; "
                                  "'9' is not an index into it"),
    ("rl_math..x=3", "--set 'rl_math..x': empty key in the dotted path"),
    ("rl_math.group_size", "--set 'rl_math.group_size': expected key.path=value"),
    ("rl_math.group_size=[4", "--set 'rl_math.group_size=[4': the value is not valid YAML"),
])  # fmt: skip
def test_bad_set_override_names_file_and_path(override, message):
    assert message in recipe_error(SMOKE, [override])


def test_set_override_indexes_lists():
    assert load_recipe(SMOKE, ["sft_stage1.data.0.limit=3"]).sft_stage1.data[0].limit == 3


@pytest.mark.parametrize("content, message", [
    (b"name: \xff\n", "cannot read recipe: 'utf-8' codec can't decode byte 0xff"),
    (b"name: [smoke\n", "cannot read recipe: while parsing a flow sequence"),
    (b"- a\n- list\n", "a recipe is a YAML mapping, got list"),
    (b"", "a recipe is a YAML mapping, got NoneType"),
    (b"name: x\nseed: 2024-13-45\n", "cannot read recipe: month must be in 1..12"),
])  # fmt: skip
def test_unreadable_recipe_names_the_file(tmp_path, content, message):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    assert message in recipe_error(path)
    assert "No such file" in recipe_error(tmp_path / "missing.yaml")


def test_unknown_source_and_benchmark_in_a_recipe(tmp_path):
    path = write_recipe(tmp_path, "{source: mbpp_train, limit: 4}]\n  group_size",
                        "{source: mbpp_trian, limit: 4}]\n  group_size")
    text = recipe_error(path)
    assert ("\n  rl_code.data[1].source: unknown data source 'mbpp_trian' (did you mean 'mbpp_train'?); "
            "registered: ") in text
    path = write_recipe(tmp_path, "{name: math500, limit: 2, k: 2}", "{name: math5000, limit: 2, k: 2}")
    text = recipe_error(path)
    assert ("\n  evaluate.benchmarks[2].name: unknown benchmark 'math5000' (did you mean 'math500'?); "
            "registered: ") in text
    assert "aime2025" in text and "gsm8k_train," not in text  # the list is the benchmarks (evaluation sources)
    path = write_recipe(tmp_path, "tokenizer_sources: [synthetic_digits, gsm8k_train]",
                        "tokenizer_sources: [synthetic_digits, gsm8k]")
    assert "\n  model.tiny.tokenizer_sources[1]: unknown data source 'gsm8k'" in recipe_error(path)
    # an hf:// root takes any source name; its mapping's verifier must still exist
    hub = "[{source: anything, data_root: 'hf://org/set', mapping: {prompt_field: q, answer_field: a, id_field: i, " \
          "domain: math, verifier: %s}}]"
    assert load_recipe(SMOKE, ["rl_math.data=" + hub % "math"]).rl_math.data[0].source == "anything"
    text = recipe_error(SMOKE, ["rl_math.data=" + hub % "nope"])
    assert "rl_math.data[0].mapping.verifier: Value error, unknown verifier 'nope'; registered: " in text
    assert "math" in text


# ================================================================== benchmarks and verifiers


def test_unknown_benchmark_in_an_evaluation():
    from posttrain.config import BenchmarkSpec
    from posttrain.eval.run import benchmark_records

    with pytest.raises(UnknownSourceError) as e:
        benchmark_records(BenchmarkSpec(name="nope", limit=2), str(DATA), seed=0)
    assert str(e.value).startswith("unknown benchmark 'nope'; registered: aime2024, aime2025")
    assert "gsm8k_train," not in str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--benchmarks", "aime2025,nope"], "unknown benchmark 'nope'"),
    (["--benchmarks", "aime2025", "--model", "/nonexistent/ckpt"], "/nonexistent/ckpt: no such folder"),
])
def test_eval_cli_rejects_unknown_benchmark_and_missing_model_before_starting(monkeypatch, tmp_path, args, message):
    import flows.evaluate
    from posttrain.cli import app

    calls = []
    monkeypatch.setattr(flows.evaluate, "evaluate", lambda *a, **k: calls.append(a))
    model = ["--model", str(tmp_path)] if "--model" not in args else []
    result = CliRunner().invoke(app, ["eval", *model, *args])
    assert result.exit_code != 0 and not calls
    assert message in one_line(result.output + str(result.exception or ""))


def test_unknown_verifier_in_grade_cli(tmp_path):
    from posttrain.cli import app
    from posttrain.grade import grade_file
    from posttrain.verifiers.base import UnknownVerifierError, verify_all

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "\\boxed{1}", "answer": "1"}) + "\n")
    result = CliRunner().invoke(app, ["grade", "--verifier", "nope", "--input", str(src), "--output",
                                      str(tmp_path / "out.jsonl")])
    assert result.exit_code != 0 and isinstance(result.exception, UnknownVerifierError)
    assert str(result.exception) == ("unknown verifier 'nope'; registered: choice, code, instruct, math, "
                                     "synthetic_digits")
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):  # also a KeyError, as before
        grade_file("nope", src, tmp_path / "out.jsonl")
    with pytest.raises(KeyError, match="unknown verifier 'mth'"):
        verify_all(["math", "mth"], ["a", "b"], [{"answer": "1"}, {"answer": "1"}])


@pytest.fixture
def restore_registry():
    from posttrain.data import registered_sources, sources

    registered_sources()
    before = dict(sources._REGISTRY)
    yield
    sources._REGISTRY.clear()
    sources._REGISTRY.update(before)


def test_unknown_verifier_in_user_benchmark_yaml(tmp_path, restore_registry):
    from posttrain.data.user_benchmarks import register_user_benchmarks

    (tmp_path / "mine.jsonl").write_text(json.dumps({"id": 1, "q": "1+1?", "a": "2"}) + "\n")
    path = tmp_path / "benchmarks.yaml"
    path.write_text("mine_bad_verifier:\n  file: mine.jsonl\n  mapping: {id_field: id, prompt_field: q, "
                    "answer_field: a, domain: math, verifier: mathh}\n")
    with pytest.raises(ValueError) as e:
        register_user_benchmarks(path)
    assert str(e.value).startswith(f"{path}: benchmark 'mine_bad_verifier': mapping.verifier: Value error, "
                                   "unknown verifier 'mathh'; registered: choice, code, instruct, math")


def test_user_benchmark_file_rows_name_file_line_and_field(tmp_path, restore_registry):
    from posttrain.data.user_benchmarks import register_user_benchmarks

    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"id": 1, "q": "1+1?", "a": "2"}) + "\n" + json.dumps({"id": 2, "q": ["x"], "a": "3"})
                    + "\n")
    (tmp_path / "b.yaml").write_text("mine_rows:\n  file: mine.jsonl\n  mapping: {id_field: id, prompt_field: q, "
                                     "answer_field: a, domain: math, verifier: math}\n")
    register_user_benchmarks(tmp_path / "b.yaml")
    with pytest.raises(DataError, match=re.escape(f"{data}: line 2: field 'q': expected a string, got list")):
        load_source("mine_rows", tmp_path)
    data.write_text(json.dumps({"id": 1, "q": "1+1?", "a": "2"}) + "\n{oops\n")
    with pytest.raises(DataError, match=re.escape(f"{data}: line 2: invalid JSON")):
        load_source("mine_rows", tmp_path)
    data.write_text(json.dumps({"id": 1, "q": "1+1?", "a": "2"}) + "\n" + json.dumps({"id": 1, "q": "2+2?", "a": "4"}))
    with pytest.raises(DataError, match=re.escape(f"{data}: line 2: field 'id': duplicate id '1' (first in line 1)")):
        load_source("mine_rows", tmp_path)
    data.write_text("")
    with pytest.raises(DataError, match=re.escape(f"{data}: no records for source 'mine_rows'")):
        load_source("mine_rows", tmp_path)
