"""Retention: keep the outputs the kept runs need (their upstream chain too), delete the rest;
a dry run deletes nothing and reports sizes. Local folder and S3 (moto server)."""

from __future__ import annotations

import time

import pytest

from posttrain.retention import apply, cleanup_markdown, plan_cleanup, runs_to_keep
from posttrain.storage import ArtifactStore, StorageError

LATER = time.time() + 10 * 86400  # "now" for plans that should treat every file as old


def _publish(store: ArtifactStore, tmp_path, stage: str, key: str, size: int, upstream: str | None = None) -> None:
    d = tmp_path / f"out-{stage}-{key}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(b"w" * size)
    store.publish_stage(stage, key, d, extra={"upstream": upstream})


def _put(store: ArtifactStore, tmp_path, rel: str, size: int) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"c" * size)
    store.put_file(f, rel)


def _record(store: ArtifactStore, run_id: str, stages: dict[str, str]) -> None:
    store.put_json(f"runs/{run_id}.json", {"run_id": run_id, "stages": [
        {"stage": s, "key": k, "uri": store.uri(f"stages/{s}/{k}")} for s, k in stages.items()]})


def _fill(store: ArtifactStore, tmp_path) -> None:
    """Two chains. Run ``champ`` ran everything; run ``new`` ran only rl_math and evaluate from
    champ's sft (``--only``), so sft is kept through rl_math-new's manifest, not its record.
    Run ``old`` is not kept: its own rl_math and evaluate go, and so do a folder that was never
    published and the leftover checkpoints of a kept output."""
    _publish(store, tmp_path, "sft_stage1", "s1", 1000)
    _publish(store, tmp_path, "rl_math", "r-champ", 2000, upstream="s1")
    _publish(store, tmp_path, "evaluate", "e-champ", 300, upstream="r-champ")
    _record(store, "champ", {"sft_stage1": "s1", "rl_math": "r-champ", "evaluate": "e-champ"})
    _publish(store, tmp_path, "rl_math", "r-new", 2100, upstream="s1")
    _publish(store, tmp_path, "evaluate", "e-new", 310, upstream="r-new")
    _record(store, "new", {"rl_math": "r-new", "evaluate": "e-new"})
    _publish(store, tmp_path, "rl_math", "r-old", 2200, upstream="s1")
    _publish(store, tmp_path, "evaluate", "e-old", 320, upstream="r-old")
    _record(store, "old", {"sft_stage1": "s1", "rl_math": "r-old", "evaluate": "e-old"})
    _put(store, tmp_path, "stages/rl_code/crashed/checkpoints/checkpoint-2/model.bin", 500)
    _put(store, tmp_path, "stages/rl_code/crashed/checkpoints/latest.json", 20)
    _put(store, tmp_path, "stages/rl_math/r-champ/checkpoints/checkpoint-1/model.bin", 400)


DELETED = ["stages/evaluate/e-old", "stages/rl_code/crashed", "stages/rl_math/r-champ/checkpoints",
           "stages/rl_math/r-old"]


def _check(store: ArtifactStore, tmp_path):
    _fill(store, tmp_path)
    before = {i.rel: i.size for i in store.list_info("")}
    plan = plan_cleanup(store, ["champ", "new"], now=LATER)
    assert sorted(e.prefix for e in plan.delete) == DELETED
    assert set(plan.kept_keys) == {"s1", "r-champ", "e-champ", "r-new", "e-new"}
    for entry in plan.delete:  # sizes are the listed files' sizes
        assert entry.bytes == sum(size for rel, size in before.items() if rel.startswith(entry.prefix + "/"))
    assert plan.bytes_to_delete == sum(e.bytes for e in plan.delete) > 2200 + 320 + 520 + 400

    report = apply(plan, store)  # dry run by default
    assert report["dry_run"] and report["bytes"] == plan.bytes_to_delete and sorted(report["deleted"]) == DELETED
    assert {i.rel: i.size for i in store.list_info("")} == before

    report = apply(plan, store, dry_run=False)
    after = {i.rel for i in store.list_info("")}
    gone = {rel for rel in before if any(rel.startswith(p + "/") for p in DELETED)}
    assert after == set(before) - gone and report["files"] == len(gone)
    assert {"runs/old.json", "stages/rl_math/r-champ/manifest.json"} <= after
    assert store.stage_manifest("rl_math", "r-old") is None and store.stage_manifest("sft_stage1", "s1")
    assert plan_cleanup(store, ["champ", "new"], now=LATER).delete == []  # nothing left to do


def test_local_store_cleanup(tmp_path):
    _check(ArtifactStore.from_uri(str(tmp_path / "art")), tmp_path)


@pytest.mark.integration
def test_s3_store_cleanup(s3_env, tmp_path):
    _check(ArtifactStore.from_uri(f"{s3_env}/root"), tmp_path)


def test_recent_outputs_are_kept(tmp_path):
    """Within min_age_s, an unkept output (a run in progress) stays."""
    store = ArtifactStore.from_uri(str(tmp_path / "art"))
    _fill(store, tmp_path)
    plan = plan_cleanup(store, ["champ"], min_age_s=3600)
    assert plan.delete == []
    assert {e.reason for e in plan.keep if e.key == "r-old"} == {"modified within 1 h"}


def test_cleanup_needs_a_kept_run_with_a_record(tmp_path):
    store = ArtifactStore.from_uri(str(tmp_path / "art"))
    _fill(store, tmp_path)
    with pytest.raises(ValueError, match="keep no stage output"):
        plan_cleanup(store, [])
    with pytest.raises(StorageError, match="runs/missing.json does not exist"):
        plan_cleanup(store, ["champ", "missing"])


def test_cleanup_markdown_lists_prefixes_and_sizes(tmp_path):
    store = ArtifactStore.from_uri(str(tmp_path / "art"))
    _fill(store, tmp_path)
    plan = plan_cleanup(store, ["champ", "new"], now=LATER)
    md = cleanup_markdown(plan)
    assert "(dry run)" in md and "Would delete 4 prefixes" in md
    rl_old = next(e for e in plan.delete if e.prefix == "stages/rl_math/r-old")
    assert f"| stages/rl_math/r-old | published | 2 | {rl_old.bytes / 1024:.1f} KiB | {rl_old.bytes:,} |" in md
    assert "| stages/rl_code/crashed | unpublished | 2 | 520 B | 520 | never published |" in md


@pytest.mark.parametrize("champion, candidates, keep, expected", [
    ("c", ["n3", "n2", "n1"], 2, ["c", "n3", "n2"]),
    ("n2", ["n3", "n2", "n1"], 2, ["n2", "n3"]),  # the champion counts among the candidates
    (None, ["n3", "n2"], 5, ["n3", "n2"]),
    ("c", ["n3", None, "n1"], 3, ["c", "n3", "n1"]),
    ("c", ["n3"], 0, ["c"]),
])
def test_runs_to_keep(champion, candidates, keep, expected):
    assert runs_to_keep(champion, candidates, keep) == expected
