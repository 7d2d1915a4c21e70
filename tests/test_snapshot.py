"""Data snapshots: a content hash of a recipe's training sources (not of mtimes, not of the root's path)."""

from __future__ import annotations

import os
import shutil

import pytest

from posttrain.config import load_recipe
from posttrain.snapshot import data_snapshot, recipe_sources

RECIPE = "recipes/smoke.yaml"


@pytest.fixture
def copied_root(data_root, tmp_path):
    """A writable copy of the files the smoke recipe's training sources read."""
    root = tmp_path / "data"
    for rel in data_snapshot(load_recipe(RECIPE), data_root)["files"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_root / rel, root / rel)
    return root


def test_sources_cover_every_training_stage_and_instruct_prompts():
    recipe = load_recipe(RECIPE)
    where = {w.split(".")[0] for w, _, _ in recipe_sources(recipe)}
    assert where == {"sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill", "instruct_rl",
                     "model"}  # smoke.yaml builds a tiny model: its tokenizer's sources count
    assert any(w.startswith("instruct_rl.prompts.sources") for w, _, _ in recipe_sources(recipe))


def test_same_bytes_same_hash(data_root, copied_root):
    recipe = load_recipe(RECIPE)
    a = data_snapshot(recipe, data_root)
    assert data_snapshot(recipe, data_root) == a
    assert data_snapshot(recipe, copied_root) == a  # another folder with the same bytes
    assert "train/gsm8k_train.jsonl" in a["files"] and "synthetic_digits" in a["sources"]
    os.utime(copied_root / "train/gsm8k_train.jsonl", (0, 0))  # mtimes do not count
    assert data_snapshot(recipe, copied_root)["hash"] == a["hash"]


def test_one_byte_changes_the_hash(data_root, copied_root):
    recipe = load_recipe(RECIPE)
    before = data_snapshot(recipe, copied_root)
    path = copied_root / "train/gsm8k_train.jsonl"
    data = bytearray(path.read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))
    after = data_snapshot(recipe, copied_root)
    assert after["hash"] != before["hash"]
    changed = {s for s in before["sources"] if before["sources"][s] != after["sources"][s]}
    assert changed == {"gsm8k_train"}
    assert [f for f in before["files"] if before["files"][f] != after["files"][f]] == ["train/gsm8k_train.jsonl"]


def test_unknown_source_and_missing_file_are_named(data_root, copied_root):
    from posttrain.config import RecipeError

    # the recipe loader already refuses it, naming the entry ...
    with pytest.raises(RecipeError, match=r"rl_code\.data\[0\]\.source: unknown data source 'no_such_source'"):
        load_recipe(RECIPE, ["rl_code.data=[{source: no_such_source}]"])
    # ... and so does the snapshot of a recipe built without that check (an older registry, say)
    recipe = load_recipe(RECIPE)
    recipe.rl_code.data[0].source = "no_such_source"
    with pytest.raises(ValueError, match=r"rl_code\.data\[0\]: unknown data source 'no_such_source'"):
        data_snapshot(recipe, data_root)
    (copied_root / "train/math_train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="math_train.jsonl"):
        data_snapshot(load_recipe(RECIPE), copied_root)


@pytest.mark.integration
def test_s3_root_hashes_like_the_local_copy(data_root, copied_root, s3_env):
    from posttrain.storage import ArtifactStore

    store = ArtifactStore.from_uri(f"{s3_env}/data")
    for path in sorted(p for p in copied_root.rglob("*") if p.is_file()):
        store.put_file(path, path.relative_to(copied_root).as_posix())
    recipe = load_recipe(RECIPE)
    assert data_snapshot(recipe, f"{s3_env}/data") == data_snapshot(recipe, data_root)
