"""Bad input of every kind fails with an error naming the file, the row and the field, and leaves
everything stored as it was. This file: missing / corrupt / truncated checkpoints, a stage on bad
data, and odd LaTeX in answers (which is not an error at all: it is graded). Data files, recipes,
sources, benchmarks and verifiers: test_bad_input_data.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.config import load_recipe
from posttrain.data import DataError

from bad_input import REPO, SMOKE, copy_data, edit_line, needs_data

pytestmark = pytest.mark.faults


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (what 'nothing stored changed' compares);
    the stage locks under ``.locks/`` are coordination, not stored output, and are left out."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if not p.relative_to(root).as_posix().startswith(".locks/")}


# ================================================================== models and checkpoints


def write_checkpoint(folder: Path, shards: int = 1) -> Path:
    """A small Hugging Face-layout checkpoint (config + safetensors, sharded when ``shards > 1``)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    tensors = {f"layer{i}.weight": np.full((16, 8), i, dtype=np.float32) for i in range(4)}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    names = sorted(tensors)
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(folder / shard))
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _random_bytes(folder: Path) -> tuple[Path, str]:
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    return folder / "model.safetensors", "corrupt: not a safetensors file"


def _cut_in_half(folder: Path) -> tuple[Path, str]:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f, "truncated: its tensors end at byte"


def _header_cut(folder: Path) -> tuple[Path, str]:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    return f, "truncated: the header needs"


def _extra_bytes(folder: Path) -> tuple[Path, str]:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes() + b"\0" * 16)
    return f, "corrupt: 16 bytes after the last tensor"


def _missing_shard(folder: Path) -> tuple[Path, str]:
    (folder / "model-00002-of-00002.safetensors").unlink()
    return folder / "model.safetensors.index.json", "truncated checkpoint: it names shard " \
                                                    "'model-00002-of-00002.safetensors', which is missing"


def _bad_config(folder: Path) -> tuple[Path, str]:
    (folder / "config.json").write_text('{"model_type": "qwen2", ')
    return folder / "config.json", "corrupt: not a JSON object"


DAMAGE = {"random bytes": (_random_bytes, 1), "cut in half": (_cut_in_half, 1), "header cut": (_header_cut, 1),
          "trailing bytes": (_extra_bytes, 1), "missing shard": (_missing_shard, 2), "bad config": (_bad_config, 1)}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_named_and_never_published(tmp_path, damage):
    from posttrain.modeling import CheckpointError, ModelError, check_checkpoint
    from posttrain.plan import import_model
    from posttrain.storage import ArtifactStore

    store = ArtifactStore.from_uri(str(tmp_path / "artifacts"))
    published = write_checkpoint(tmp_path / "published" / "model")
    store.publish_stage("sft_stage1", "k" * 32, published.parent, extra={"summary": {}})
    import_model(str(write_checkpoint(tmp_path / "good")), store)  # a sound checkpoint is imported
    before = digest(tmp_path / "artifacts")

    make, shards = DAMAGE[damage]
    bad_file, problem = make(write_checkpoint(tmp_path / "ckpt", shards))
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(tmp_path / "ckpt")
    assert isinstance(e.value, ModelError) and isinstance(e.value, ValueError)
    assert e.value.path == str(bad_file) and str(e.value).startswith(f"{bad_file}: {problem}")
    with pytest.raises(CheckpointError, match=re.escape(f"{bad_file}: {problem}")) as e:
        import_model(str(tmp_path / "ckpt"), store)
    assert str(e.value).endswith(f"(--model {tmp_path / 'ckpt'})")
    assert digest(tmp_path / "artifacts") == before  # nothing imported, nothing published overwritten


@pytest.mark.parametrize("damage", ["random bytes", "cut in half", "missing shard"])
def test_damaged_checkpoint_as_model_source(tmp_path, damage):
    from posttrain.config import ModelSpec
    from posttrain.modeling import CheckpointError, prepare_model

    make, shards = DAMAGE[damage]
    bad_file, problem = make(write_checkpoint(tmp_path / "ckpt", shards))
    with pytest.raises(CheckpointError) as e:
        prepare_model(ModelSpec(source=str(tmp_path / "ckpt")), tmp_path / "out")
    assert str(e.value).startswith(f"{bad_file}: {problem}") and "model.source" in str(e.value)


def test_missing_model_path(tmp_path):
    from posttrain.config import ModelSpec
    from posttrain.modeling import CheckpointError, ModelError, prepare_model
    from posttrain.plan import import_model
    from posttrain.storage import ArtifactStore

    store = ArtifactStore.from_uri(str(tmp_path / "artifacts"))
    missing = "/nonexistent/ckpt: no such folder (--model /nonexistent/ckpt)"
    with pytest.raises(CheckpointError, match=re.escape(missing)):
        import_model("/nonexistent/ckpt", store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'empty'}: not a Hugging Face model folder")):
        import_model(str(tmp_path / "empty"), store)
    assert not (tmp_path / "artifacts").exists() or digest(tmp_path / "artifacts") == {}
    for source in ("/nonexistent/model", "./nonexistent-model"):
        with pytest.raises(ModelError, match=re.escape(f"model {source!r} could not be loaded: no such folder")):
            prepare_model(ModelSpec(source=source), tmp_path / "out")


def test_damaged_resume_checkpoint_and_param_delta(tmp_path):
    from posttrain.checkpoints import RemoteCheckpoints, param_delta
    from posttrain.modeling import CheckpointError
    from posttrain.storage import ArtifactStore

    store = ArtifactStore.from_uri(str(tmp_path / "artifacts"))
    mirror = RemoteCheckpoints(store, "stages/rl_math/abc")
    mirror.upload(write_checkpoint(tmp_path / "checkpoint-2"))
    stored = tmp_path / "artifacts" / "stages/rl_math/abc/checkpoints/checkpoint-2/model.safetensors"
    stored.write_bytes(stored.read_bytes()[:100])
    before = digest(tmp_path / "artifacts")
    uri = store.uri("stages/rl_math/abc/checkpoints/checkpoint-2/model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{uri}: truncated")):
        mirror.latest(tmp_path / "resume")
    assert digest(tmp_path / "artifacts") == before
    with pytest.raises(CheckpointError, match="model.safetensors: truncated"):
        param_delta(write_checkpoint(tmp_path / "a"), stored.parent)


@needs_data
def test_bad_data_fails_a_stage_and_changes_nothing_stored(tmp_path, monkeypatch):
    """A stage whose data is bad raises before publishing: the published outputs under the
    artifact root (the same key included, with --force) keep every byte."""
    from posttrain.pipeline import run_stage
    from posttrain.storage import ArtifactStore

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    path = copy_data(tmp_path / "data", "train/gsm8k_train.jsonl")
    edit_line(path, 3, lambda r: r.pop("question"))
    recipe = load_recipe(SMOKE)
    store = ArtifactStore.from_uri(str(tmp_path / "artifacts"))
    out = tmp_path / "published"
    write_checkpoint(out / "model")
    (out / "summary.json").write_text("{}")
    for stage, key in (("prepare_model", "p" * 32), ("sft_stage1", "s" * 32)):
        store.publish_stage(stage, key, out, extra={"summary": {"parameters": 1}})
    before = digest(tmp_path / "artifacts")
    for key, force in (("p" * 32, True), ("q" * 32, False)):
        with pytest.raises(DataError) as e:
            run_stage("prepare_model", recipe, key, None, store, force=force, data_root=str(tmp_path / "data"))
        assert (e.value.path, e.value.row, e.value.field) == (str(path), 3, "question")
        assert digest(tmp_path / "artifacts") == before


# ================================================================== odd LaTeX in answers


ODD = [
    "\\frac{1}{", "\\boxed{", "\\boxed{\\frac{1}{2}", "}{}{", "\\boxed{\\text{}}", "\\text{}", "\\boxed{}",
    "\x00\\boxed{1\x00}", "\\boxed{😀}", "😀 \\boxed{1} 🎉", "$$$", "\\boxed{\\boxed{\\boxed{}}}", "\\\\\\\\",
    "\\boxed{\\frac{\\frac{\\frac{1}{2}}{3}}{4}}", "</think>", "<think>\\boxed{1}", "\\boxed{1}" + "{" * 100_000,
    "x" * 100_000, "\\boxed{" + "\\frac{" * 20 + "}", "The final answer is \\frac{1}{", "\\boxed{1^{2^{3^{", "\ud800",
    "\\boxed{\\sqrt{-1}}", "\\boxed{1/0}", "\\boxed{\\infty}", "\\boxed{x=}",
]  # fmt: skip
# Integer answers past Python's 4300-digit int() limit (the gold is "1").
HUGE = ["\\boxed{" + "9" * 5000 + "}", "The final answer is " + "1" * 100_000, "\\boxed{0" + "0" * 5000 + "1}"]
GOLDS = ["1", "\\frac{1}{2}", "x^2+1", "\\text{(C)}", "(1, 2)"]
REASONS = {"correct", "wrong answer", "no answer found", "timeout", "grader error"}


def _check(verdicts, n: int) -> None:
    """``n`` verdicts, each a score in [0, 1] agreeing with ``passed``, with a known reason."""
    assert len(verdicts) == n
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and v.passed == (v.score == 1.0) and v.details["reason"] in REASONS


def test_odd_latex_never_crashes_the_math_verifier():
    from posttrain.verifiers.math import MathVerifier

    verifier = MathVerifier(timeout_s=20)
    completions = [c for c in ODD for _ in GOLDS]
    golds = [g for _ in ODD for g in GOLDS]
    verdicts = verifier.verify_batch(completions, [{"answer": g} for g in golds])  # worker processes
    _check(verdicts, len(completions))
    for completion in ODD:  # single items run in this process
        _check([verifier.verify(completion, {"answer": "1"})], 1)
    # A power tower sympy cannot evaluate: math-verify's own timeout (3 s) ends it, not a crash.
    tower = verifier.verify("\\boxed{10^{10^{10^{10}}}}", {"answer": "1"})
    assert tower.score == 0.0 and tower.details["reason"] in ("wrong answer", "timeout")
    by_pair = {(c, g): v for c, g, v in zip(completions, golds, verdicts)}
    assert by_pair["\x00\\boxed{1\x00}", "1"].passed and by_pair["😀 \\boxed{1} 🎉", "1"].passed
    assert by_pair["\\boxed{1}" + "{" * 100_000, "1"].passed  # the last complete box counts
    assert by_pair["\\boxed{\\frac{1}{2}", "\\frac{1}{2}"].details["reason"] == "no answer found"


@pytest.mark.parametrize("completion", HUGE, ids=["5000 nines", "100k ones", "5002 digits = 1"])
def test_huge_integer_answers_are_graded(completion):
    from posttrain.verifiers.math import MathVerifier

    verdict = MathVerifier().verify(completion, {"answer": "1"})
    assert verdict.details["reason"] == ("correct" if completion.endswith("01}") else "wrong answer")


def test_many_unclosed_boxes_are_graded_in_linear_time():
    code = ("from posttrain.verifiers.math import MathVerifier\n"
            "v = MathVerifier().verify('\\\\boxed{' * 15000, {'answer': '1'})\n"
            "assert v.details['reason'] == 'no answer found'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=25)


def _grade(tmp_path, lines: list[str], *extra: str):
    from posttrain.cli import app

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return CliRunner().invoke(app, ["grade", "--verifier", "math", "--input", str(src), "--output", str(out),
                                    *extra]), src, out


def test_grade_cli_writes_one_line_per_odd_input_line(tmp_path):
    rows = [{"completion": c, "answer": g} for c in ODD for g in ("1", "\\frac{1}{2}")]
    rows.append({"completion": "\\boxed{2}", "answer": "\\frac{1}{"})  # an odd gold is graded too
    result, src, out = _grade(tmp_path, [json.dumps(r) for r in rows], "--workers", "1")  # workers=2: test_grade
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["completion"] for g in graded] == [r["completion"] for r in rows]  # same order, one each
    assert all(0 <= g["score"] <= 1 for g in graded)


def test_grade_cli_grades_huge_integer_answers(tmp_path):
    result, src, out = _grade(tmp_path, [json.dumps({"completion": c, "answer": "1"}) for c in HUGE],
                              "--workers", "1")
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == len(HUGE)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "in.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('["a list"]', "in.jsonl:2: expected a JSON object, got list"),
    ("", "in.jsonl:2: blank line"),
    ('{"completion": "\\\\boxed{1}"}', "in.jsonl:2: missing field 'answer'"),
    ('{"completion": ["x"], "answer": "1"}', "in.jsonl:2: field 'completion' must be a string"),
    ('{"completion": "\\\\boxed{1}", "answer": [1, 2]}', "in.jsonl:2: math reference needs a non-empty string "
                                                         "'answer', got [1, 2]"),
    ('{"completion": "x", "answer": ' + "1" * 5000 + "}",
     "in.jsonl:2: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    ("[" * 100_000, "in.jsonl:2: not valid JSON (nested too deeply)"),
])  # fmt: skip
def test_grade_cli_bad_line_names_file_and_line_and_keeps_the_old_output(tmp_path, bad, message):
    """A malformed line fails the run (no per-line error records: see posttrain.grade), the
    error names the input file and the line, and an existing output file is left as it was."""
    (tmp_path / "out.jsonl").write_text("an earlier result\n")
    ok = json.dumps({"completion": "\\boxed{1}", "answer": "1"})
    result, src, out = _grade(tmp_path, [ok, bad, ok], "--workers", "1")
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)
    assert str(result.exception).startswith(f"{src.parent}/") and message in str(result.exception)
    assert out.read_text() == "an earlier result\n" and not list(tmp_path.glob("*.partial"))


def test_grade_cli_line_not_utf8(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"completion": "\\\\boxed{1}", "answer": "1"}\n{"completion": "\xff", "answer": "1"}\n')
    from posttrain.grade import grade_file

    with pytest.raises(ValueError, match=re.escape(f"{src}:2: not valid UTF-8 (byte 17 of the line)")):
        grade_file("math", src, tmp_path / "out.jsonl", workers=1)
    assert not (tmp_path / "out.jsonl").exists()
