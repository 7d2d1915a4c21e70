"""Artifact store: content-addressed stage outputs, manifest last, local and S3 (moto server)."""

import json

import pytest

from posttrain.storage import ArtifactStore, LocalStore, S3Store, StorageError


def _stage_dir(tmp_path):
    d = tmp_path / "out"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (d / "report.json").write_text(json.dumps({"ok": True}))
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "step-1.bin").write_bytes(b"partial")
    return d


def _roundtrip(store: ArtifactStore, tmp_path):
    assert store.stage_manifest("sft_stage1", "abc") is None
    manifest = store.publish_stage("sft_stage1", "abc", _stage_dir(tmp_path), extra={"summary": {"loss": 1.0}})
    assert set(manifest["files"]) == {"model/weights.bin", "report.json"}  # checkpoints are not outputs
    again = store.stage_manifest("sft_stage1", "abc")
    assert again["content_hash"] == manifest["content_hash"] and again["summary"] == {"loss": 1.0}
    local = store.fetch_stage("sft_stage1", "abc")
    assert (local / "model" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert store.list("stages/sft_stage1/abc") == sorted(
        ["stages/sft_stage1/abc/manifest.json", "stages/sft_stage1/abc/model/weights.bin",
         "stages/sft_stage1/abc/report.json"])


def test_local_store(tmp_path):
    store = ArtifactStore.from_uri(str(tmp_path / "art"))
    assert isinstance(store, LocalStore)
    _roundtrip(store, tmp_path)


@pytest.mark.integration
def test_s3_store(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore.from_uri(f"{s3_env}/prefix")
    assert isinstance(store, S3Store)
    _roundtrip(store, tmp_path)


def test_output_without_manifest_is_invisible(tmp_path):
    store = ArtifactStore.from_uri(str(tmp_path / "art"))
    store.put_file(_stage_dir(tmp_path) / "report.json", "stages/rl_math/k1/report.json")
    assert store.stage_manifest("rl_math", "k1") is None
    with pytest.raises(StorageError, match="no manifest"):
        store.fetch_stage("rl_math", "k1")


@pytest.mark.integration
def test_s3_corrupt_download_is_detected(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore.from_uri(s3_env)
    store.publish_stage("distill", "k", _stage_dir(tmp_path))
    src = tmp_path / "evil.json"
    src.write_text("tampered")
    store.put_file(src, "stages/distill/k/report.json")  # the object changes after publication
    with pytest.raises(StorageError, match="sha256"):
        store.fetch_stage("distill", "k")


def test_unsupported_uri():
    with pytest.raises(StorageError, match="unsupported"):
        ArtifactStore.from_uri("gs://bucket/x")
