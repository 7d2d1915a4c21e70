"""Property tests (hypothesis, derandomized so CI is reproducible): whatever the bytes, rows,
recipe trees or LaTeX, the loaders, the recipe parser and the math verifier either work or fail
with the project's own error naming the file (and row), never with a stray library exception."""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.config import Recipe, RecipeError, apply_overrides, load_recipe, validate_recipe
from posttrain.data import DataError, get_source, load_source
from posttrain.data.readers import read_jsonl
from posttrain.records import Record

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
DATA = Path(os.environ.get("POSTTRAIN_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"no shipped data at {DATA}")


def fuzz(max_examples: int):
    """Settings shared by every property: reproducible (derandomized, no example database)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# JSON values of every kind: what a broken export or a hand edit can put in a field, with the
# awkward ones drawn often: digits int() refuses (superscripts, 4300+ digits), numbers float()
# refuses, lone surrogates (JSON's "\ud800"), blank strings.
text = st.text(st.characters(codec="utf-8"), max_size=12)
awkward = st.one_of(
    st.sampled_from(["", " ", "²", "٣", "\ud800", "Level ²", "#### ", "#### ²", "\\boxed{", 1e308, -0.0,
                     "0" * 4400 + "7"]),
    st.integers(4301, 4400).map(lambda n: "9" * n),  # digits int() refuses
    st.integers(4301, 4400).map(lambda n: "Level " + "1" * n),
    st.integers(309, 400).map(lambda n: 10**n),  # integers float() refuses
    st.integers(309, 400).map(lambda n: -(10**n)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | text | awkward,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def check_data_error(err: DataError, path: Path) -> None:
    """A loader's error names the file and, unless the file as a whole is at fault, a row."""
    assert err.path == str(path), err
    assert str(err).startswith(f"{path}: "), err
    whole_file = err.problem.startswith(("no records", "duplicate record id", "invalid JSON (nested",
                                         "expected a JSON array")) or err.unit == "file"
    assert err.row is not None or whole_file, err
    if err.row is not None:
        assert err.row >= 1 and f"{err.unit} {err.row}: " in str(err), err


# ================================================================== (a) the JSONL reader and loaders


lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(text, json_values, max_size=4).map(
            lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        st.sampled_from([b"", b"   ", b"\r", b"\xef\xbb\xbf{}", b'{"a": 1}\r{"b": 2}', b"[" * 3000, b"9" * 5000,
                         b'{"a": "\\ud800"}', b"\xff\xfe", b"\x00"]),
    ),
    max_size=8,
)


@fuzz(200)
@given(lines=lines, gz=st.booleans())
def test_jsonl_reader_returns_rows_or_names_file_and_line(lines, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("rows.jsonl.gz" if gz else "rows.jsonl")
        raw = b"\n".join(lines)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        try:
            rows = list(read_jsonl(path))
        except DataError as err:
            check_data_error(err, path)
            assert err.row <= raw.count(b"\n") + raw.count(b"\r") + 1
        else:
            assert all(isinstance(r.data, dict) and r.number >= 1 for r in rows)
            assert [r.number for r in rows] == sorted({r.number for r in rows})


@fuzz(100)
@given(raw=st.binary(max_size=300), cut=st.integers(0, 64))
def test_jsonl_reader_on_arbitrary_and_damaged_gzip_bytes(raw, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl.gz"
        packed = gzip.compress(raw)
        path.write_bytes(packed[: max(len(packed) - cut, 0)] if cut else raw)
        try:
            list(read_jsonl(path))
        except DataError as err:
            check_data_error(err, path)


# Shipped sources of every reader (JSONL, gzipped JSONL, JSON array, CSV) and loader kind.
SOURCES = ["gsm8k_train", "math_train", "math500", "aime2025", "aime_1983_2023", "imo_answerbench", "arc_easy_train",
           "mmlu_pro_stem", "ifeval", "ifbench", "mbpp_train", "humaneval", "codejam", "leetcode", "code_contests",
           "leetcode_train", "codeforces"]


def _shipped_rows(name: str, n: int = 4) -> tuple[str, list]:
    """(file relative to the data root, its first ``n`` rows as dicts) of source ``name``."""
    rel = get_source(name).files[0]
    path = DATA / rel
    if rel.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return rel, [dict(r) for _, r in zip(range(n), csv.DictReader(f))]
    if rel.endswith(".json"):
        return rel, json.loads(path.read_text())[:n]
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return rel, [json.loads(line) for _, line in zip(range(n), f)]


@st.composite
def mutated_file(draw):
    """(source, file relative to the root, file bytes): a few shipped rows, then random edits."""
    name = draw(st.sampled_from(SOURCES))
    rel, rows = _shipped_rows(name)
    if name.startswith("mbpp"):  # keep the rows inside the split's task_id range
        rows = [{**r, "task_id": 601 + i} for i, r in enumerate(rows)]
    rows = [dict(r) for r in rows]
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(rows) - 1))
        row = rows[i]
        op = draw(st.sampled_from(["delete", "replace", "insert", "nested", "row", "duplicate"]))
        keys = sorted(row) if isinstance(row, dict) else []
        if op == "delete" and keys:
            del row[draw(st.sampled_from(keys))]
        elif op == "replace" and keys:
            row[draw(st.sampled_from(keys))] = draw(awkward | json_values)
        elif op == "insert" and isinstance(row, dict):
            row[draw(text)] = draw(json_values)
        elif op == "nested" and keys:  # edit one level down: question.choices, tests[0], meta
            key = draw(st.sampled_from(keys))
            inner = row[key]
            if isinstance(inner, dict) and inner:
                inner = dict(inner)
                inner[draw(st.sampled_from(sorted(inner)))] = draw(json_values)
            elif isinstance(inner, list) and inner:
                inner = list(inner)
                inner[draw(st.integers(0, len(inner) - 1))] = draw(json_values)
            row[key] = inner
        elif op == "row":
            rows[i] = draw(json_values)
        elif op == "duplicate":
            rows.append(rows[i])
    if rel.endswith(".csv"):
        out = io.StringIO(newline="")
        fields = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r)) or ["x"]
        writer = csv.DictWriter(out, fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()}
                            if isinstance(r, dict) else {fields[0]: json.dumps(r)})
        raw = out.getvalue().encode("utf-8", "surrogatepass")
    elif rel.endswith(".json"):
        raw = json.dumps(rows).encode()
    else:
        raw = b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"
    if draw(st.booleans()):  # a damaged byte range on top
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=6)) + raw[at + draw(st.integers(0, 8)):]
    if rel.endswith(".gz"):
        raw = gzip.compress(raw)
    return name, rel, raw


@needs_data
@fuzz(200)
@given(case=mutated_file())
def test_source_loaders_return_records_or_name_file_and_row(case):
    name, rel, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / rel
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
        try:
            records = load_source(name, tmp, limit=3)
        except DataError as err:
            check_data_error(err, path)
        else:
            assert records and all(isinstance(r, Record) and r.id.startswith(f"{name}/") for r in records)


# ================================================================== (b) the recipe parser


BASE = yaml.safe_load(SMOKE.read_text())
# Field names and values a person might write: typos of real ones, and anything else.
keys = st.one_of(st.sampled_from(["source", "limit", "max_steps", "group_size", "engine", "train", "data",
                                  "benchmarks", "name", "k", "tiny", "seed", "placement", "teacher", "probe"]),
                 text.filter(bool))
values = st.one_of(json_values, st.sampled_from([{}, [], "", "hf://x/y", "vllm", {"source": "gsm8k_train"},
                                                 [{"name": "nope"}], -1, 0, 10**30, 1e-300]).map(copy.deepcopy))


def _nodes(tree, path=()):
    """Every (path, node) of a recipe tree whose node is a mapping or a list."""
    yield path, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in items:
        if isinstance(v, (dict, list)):
            yield from _nodes(v, (*path, k))


def _leaves(tree, path=()):
    """Dotted paths of the tree (what --set takes), mappings and leaves alike."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in items:
        yield ".".join(map(str, (*path, k)))
        yield from _leaves(v, (*path, k))


@st.composite
def mutated_recipe(draw):
    """(recipe tree, --set overrides): smoke.yaml with keys deleted, unknown keys inserted,
    values replaced by random JSON values, and random overrides."""
    tree = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 5))):
        path, node = draw(st.sampled_from(list(_nodes(tree))))
        op = draw(st.sampled_from(["delete", "insert", "replace", "retype"]))
        if isinstance(node, dict):
            if op == "delete" and node:
                del node[draw(st.sampled_from(sorted(node)))]
            elif op == "insert":
                node[draw(keys)] = draw(values)
            elif node:
                node[draw(st.sampled_from(sorted(node)))] = draw(values)
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if op == "delete":
                del node[i]
            else:
                node[i] = draw(values)
    dotted = st.one_of(st.sampled_from(sorted(set(_leaves(BASE)))),
                       st.lists(keys, min_size=1, max_size=4).map(".".join), text)
    overrides = draw(st.lists(st.one_of(
        st.tuples(dotted, values.map(json.dumps)).map("=".join),
        st.tuples(dotted, text).map("=".join),
        text,
    ), max_size=3))
    return tree, overrides


@fuzz(200)
@given(case=mutated_recipe())
def test_recipe_parser_returns_a_recipe_or_names_the_file(case):
    tree, overrides = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(tree, allow_unicode=True))
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as err:
            assert str(err).startswith(f"{path}: "), err
        else:
            assert isinstance(recipe, Recipe)
    try:  # the same tree as the Prefect parameter path gives it: no file, a label
        validate_recipe(apply_overrides(json.loads(json.dumps(tree)), overrides, "<parameter>"), "<parameter>")
    except RecipeError as err:
        assert str(err).startswith("<parameter>: "), err


@fuzz(100)
@given(content=st.one_of(st.binary(max_size=200), text.map(str.encode),
                         st.sampled_from([b"a: &x [*x]\n", b"? [a]\n: 1\n", b"seed: 2024-13-45\n", b"{" * 2000,
                                          b"name: !!python/object:os.system x\n", b"\t- x"])))
def test_recipe_parser_on_arbitrary_bytes(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(content)
        with pytest.raises(RecipeError) as err:  # no byte string is a whole recipe
            load_recipe(path)
        assert str(err.value).startswith(f"{path}: ")


# ================================================================== (c) the math verifier


LATEX = st.lists(st.one_of(
    st.sampled_from(["\\frac{", "\\dfrac", "}", "{", "^", "_", "\\boxed{", "\\fbox{", "\\sqrt{", "\\text{", "\\left(",
                     "\\right)", "(", ")", "[", "]", ",", "\\pi", "\\infty", "-", "+", "/", "\\cdot", "\\times", "$",
                     "$$", "\\(", "\\)", "\\[", "\\]", "</think>", "<think>", "The final answer is ", "Answer: ", "\n",
                     " ", "x", "n", "=", "\\pm", "%", "\\%", "\\$", "\\,", "\\!", "\\{", "\\}", "\\in", "\\le", "...",
                     "\\ldots", "0", "1", "2", "9", "10", "0.5", "1.5", "e", "i", "\\mathbb{R}", "\\cup", "odd",
                     "😀", "\x00", "½", "٣", "ⅷ", "\\\\", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\circ",
                     "^\\circ"]),
    st.text(max_size=3),
    st.integers(-10**12, 10**12).map(str),
), max_size=16).map("".join)


@fuzz(50)
@given(pairs=st.lists(st.tuples(LATEX, LATEX), min_size=1, max_size=8))
def test_math_verifier_scores_random_latex_in_unit_interval(pairs):
    from posttrain.verifiers.math import MathVerifier

    golds = [g if g.strip() else "1" for _, g in pairs]  # a gold is a non-blank string (else ValueError)
    completions = [c for c, _ in pairs]
    verdicts = MathVerifier(timeout_s=20).verify_batch(completions, [{"answer": g} for g in golds])
    assert len(verdicts) == len(pairs)
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and v.passed == (v.score == 1.0)
        assert v.details["reason"] in {"correct", "wrong answer", "no answer found", "timeout", "grader error"}


AWKWARD = ["", " ", "²", "٣", "\ud800", "#### ²", "\\boxed{", None, True, 1e308, -0.0, float("nan"), 10**400,
           -(10**400), "9" * 5000, "Level " + "1" * 5000, "0" * 4400 + "7", [], {}, ["x"], [{}], {"a": None}]


def _paths(row, prefix=()):
    """Every field path of a row, nested ones too (``question.choices[0].label`` as a key tuple)."""
    items = row.items() if isinstance(row, dict) else enumerate(row[:2]) if isinstance(row, list) else []
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _set(row, path, value):
    node = row
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@needs_data
@pytest.mark.parametrize("name", SOURCES)
def test_every_field_of_every_source_with_awkward_values(name, tmp_path):
    """Not random: each field of a shipped row (nested ones too) set in turn to each awkward
    value; the loader gives records or a DataError naming the file, the row and that field."""
    rel, rows = _shipped_rows(name, n=2)
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    for field in _paths(rows[0]):
        for value in AWKWARD:
            changed = json.loads(json.dumps(rows[0]))
            _set(changed, field, value)
            batch = [changed, rows[1]]
            if rel.endswith(".csv"):
                out = io.StringIO(newline="")
                writer = csv.DictWriter(out, list(rows[0]))
                writer.writeheader()
                writer.writerows({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in batch)
                raw = out.getvalue().encode("utf-8", "surrogatepass")
            elif rel.endswith(".json"):
                raw = json.dumps(batch).encode()
            else:
                raw = b"\n".join(json.dumps(r).encode() for r in batch)
            path.write_bytes(gzip.compress(raw) if rel.endswith(".gz") else raw)
            try:
                records = load_source(name, tmp_path)
            except DataError as err:
                check_data_error(err, path)
            except Exception as err:  # noqa: BLE001 - report which field and value broke the loader
                shown = f"{name}: field {field} = {str(value)[:40]!r}"
                raise AssertionError(f"{shown}: {type(err).__name__}: {err}") from err
            else:
                assert all(isinstance(r, Record) for r in records)
