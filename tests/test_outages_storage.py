"""Outages and contention at the artifact store: the S3 server stopping mid-upload, and two runs
of the same pipeline at once (``make test-faults``). MLflow outages: test_outages_tracking.py.

Each test starts its own servers (not the session ones), since it stops and restarts them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from outage_servers import Moto, TcpProxy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    def point_at(url: str, bucket: str = "outage-test") -> str:
        import boto3

        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        boto3.client("s3").create_bucket(Bucket=bucket)
        return f"s3://{bucket}"

    return point_at


def _stage_dir(tmp_path: Path, files: int) -> Path:
    d = tmp_path / "out"
    for i in range(files):
        (d / "model" / f"shard-{i:02d}.bin").parent.mkdir(parents=True, exist_ok=True)
        (d / "model" / f"shard-{i:02d}.bin").write_bytes(os.urandom(4096))
    return d


# -- 1. S3 ------------------------------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_s3_server_stopped_mid_upload_fails_the_stage_clearly_then_a_rerun_publishes(
        aws_env, data_root, tmp_path, monkeypatch):
    """The S3 server dies after the first file of prepare_model's output is uploaded and stays
    down: the stage fails within the retry time with a message naming the stage, key, endpoint,
    attempts and time; no manifest exists; against the restarted server a rerun publishes."""
    from mlflow.tracking import MlflowClient

    from posttrain.config import load_recipe
    from posttrain.pipeline import run_stage
    from posttrain.storage import ArtifactStore, S3Store, StorageError
    from posttrain.tracking import Tracker

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("POSTTRAIN_S3_RETRY_SECONDS", "3")
    moto = Moto().start()
    try:
        root = aws_env(moto.url) + "/art"
        store = ArtifactStore.from_uri(root)
        recipe = load_recipe("recipes/smoke.yaml")
        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        parent = Tracker.start_pipeline("outages", "s3", {}, uri)
        key = "s3-outage-key"
        uploaded: list[str] = []
        real_put = S3Store.put_file

        def put_then_stop_server(self, local, rel):
            real_put(self, local, rel)
            if rel.startswith(f"stages/prepare_model/{key}/") and not uploaded:
                uploaded.append(rel)
                moto.stop()

        monkeypatch.setattr(S3Store, "put_file", put_then_stop_server)
        start = time.monotonic()
        with pytest.raises(StorageError) as failure:
            run_stage("prepare_model", recipe, key, None, store, parent, data_root=str(data_root))
        failed_after = time.monotonic() - start
        message = str(failure.value)
        print(f"\nstage failed {failed_after:.1f} s after it started: {message}")
        assert uploaded, "the hook never stopped the server"
        assert f"prepare_model (key {key})" in message and f"{root}/stages/prepare_model/{key}" in message
        assert f"S3 endpoint {moto.url} unreachable" in message and "POSTTRAIN_S3_RETRY_SECONDS=3" in message
        assert "attempts over" in message and "nothing of it is visible" in message
        # the stage's MLflow run is closed as failed
        children = MlflowClient(uri).search_runs([MlflowClient(uri).get_run(parent.run_id).info.experiment_id],
                                                 filter_string="tags.stage = 'prepare_model'")
        assert [c.info.status for c in children] == ["FAILED"]

        monkeypatch.setattr(S3Store, "put_file", real_put)
        moto.start()  # same port, empty: recreate the bucket
        aws_env(moto.url)
        assert store.stage_manifest("prepare_model", key) is None
        record = run_stage("prepare_model", recipe, key, None, store, parent, data_root=str(data_root))
        assert not record.cached and store.stage_manifest("prepare_model", key)["content_hash"] == record.content_hash
        assert not store.exists(f"stages/prepare_model/{key}/lease.json")  # released after publication
        assert run_stage("prepare_model", recipe, key, None, store, parent, data_root=str(data_root)).cached
    finally:
        moto.stop()


@pytest.mark.faults
@pytest.mark.integration
def test_s3_outage_within_the_retry_time_is_absorbed(aws_env, tmp_path, monkeypatch, caplog):
    """The endpoint drops every connection and refuses new ones for 5 s in the middle of a
    publication (longer than botocore's own retry waits); the retries carry the upload through
    and the output is complete."""
    from posttrain.storage import ArtifactStore, S3Store

    monkeypatch.setenv("POSTTRAIN_S3_RETRY_SECONDS", "30")
    moto = Moto().start()
    proxy = TcpProxy(moto.port)
    proxy.up()
    try:
        store = ArtifactStore.from_uri(aws_env(proxy.url) + "/art")
        calls = []
        real_put = S3Store.put_file

        def put_with_outage(self, local, rel):
            calls.append(rel)
            if len(calls) == 4:  # three files are up: the endpoint goes away for 5 s
                proxy.down()
                threading.Timer(5.0, proxy.up).start()
            real_put(self, local, rel)

        monkeypatch.setattr(S3Store, "put_file", put_with_outage)
        folder = _stage_dir(tmp_path, files=12)
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="posttrain.storage"):
            manifest = store.publish_stage("rl_math", "brief", folder)
        took = time.monotonic() - start
        print(f"\npublication of 12 files with a 5 s outage took {took:.1f} s")
        assert any("retrying for up to 30 s" in r.getMessage() for r in caplog.records)
        assert 5.0 <= took < 30
        assert len(manifest["files"]) == 12
        local = store.fetch_stage("rl_math", "brief")
        assert sorted(f"model/{p.name}" for p in (local / "model").iterdir()) == sorted(manifest["files"])
    finally:
        proxy.down()
        moto.stop()


@pytest.mark.faults
@pytest.mark.integration
def test_s3_outage_past_the_retry_time_leaves_no_visible_partial_output(aws_env, tmp_path, monkeypatch):
    """The endpoint goes away for good after two files while the server keeps its objects: the
    publication fails with a clear message, the two files are in the bucket but no manifest, so
    no reader takes them for an output; once the endpoint is back a rerun publishes."""
    from posttrain.pipeline import cached_record
    from posttrain.storage import ArtifactStore, S3Store, StorageError

    monkeypatch.setenv("POSTTRAIN_S3_RETRY_SECONDS", "2")
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    moto = Moto().start()
    proxy = TcpProxy(moto.port)
    proxy.up()
    try:
        root = aws_env(proxy.url) + "/art"
        store = ArtifactStore.from_uri(root)
        calls = []
        real_put = S3Store.put_file

        def put_then_outage(self, local, rel):
            calls.append(rel)
            if len(calls) == 3:
                proxy.down()
            real_put(self, local, rel)

        monkeypatch.setattr(S3Store, "put_file", put_then_outage)
        folder = _stage_dir(tmp_path, files=6)
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"rl_math \(key partial\): publishing to .* stopped before its "
                                               r"manifest.*S3 endpoint .* unreachable: upload of .* failed after "
                                               r"\d+ attempts over"):
            store.publish_stage("rl_math", "partial", folder)
        print(f"\nfailed after {time.monotonic() - start:.1f} s (POSTTRAIN_S3_RETRY_SECONDS=2)")
        assert time.monotonic() - start < 2 + 10

        proxy.up()
        assert len(store.list("stages/rl_math/partial")) == 2  # what was uploaded stays, invisible
        assert store.stage_manifest("rl_math", "partial") is None
        assert cached_record(store, "rl_math", "partial") is None
        with pytest.raises(StorageError, match="no manifest"):
            store.fetch_stage("rl_math", "partial")
        monkeypatch.setattr(S3Store, "put_file", real_put)
        manifest = store.publish_stage("rl_math", "partial", folder)
        assert len(manifest["files"]) == 6 and cached_record(store, "rl_math", "partial") is not None
    finally:
        proxy.down()
        moto.stop()


# -- 2. two runs at once --------------------------------------------------------------------------
DRIVER = r'''
"""One "run": prepare_model of the smoke recipe through posttrain.pipeline.run_stage."""
import dataclasses, json, logging, os, sys, time
from pathlib import Path

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from posttrain import pipeline, storage
from posttrain.config import load_recipe
from posttrain.tracking import Tracker

real_publish = storage.ArtifactStore.publish_stage
def publish(self, *args, **kwargs):
    print("PUBLISH", file=sys.stderr, flush=True)
    return real_publish(self, *args, **kwargs)
storage.ArtifactStore.publish_stage = publish
stage = pipeline.STAGES["prepare_model"]
def slow(ctx, recipe):  # long enough that the other run arrives while this one computes
    out = stage.run(ctx, recipe)
    time.sleep(float(os.environ["DRIVER_SLOW"]))
    return out
pipeline.STAGES["prepare_model"] = dataclasses.replace(stage, run=slow)

recipe = load_recipe("recipes/smoke.yaml")
store = storage.ArtifactStore.from_uri(os.environ["DRIVER_ROOT"])
parent = Tracker(os.environ["DRIVER_PARENT"])
barrier, me = Path(os.environ["DRIVER_BARRIER"]), int(os.environ["DRIVER_INDEX"])
(barrier / str(me)).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.02)
# moto checks If-None-Match and stores the object in two steps, so two PUTs in the same
# millisecond can both succeed there (AWS S3 is atomic): stagger the second run a little.
time.sleep(0.3 * me)
record = pipeline.run_stage("prepare_model", recipe, os.environ["DRIVER_KEY"], None, store, parent,
                            data_root=os.environ["DRIVER_DATA"])
print(json.dumps(record.model_dump(mode="json")))
'''


def _two_runs(root: str, tmp_path: Path, data_root: Path, env_extra: dict) -> tuple[list[dict], list[str], str]:
    """Start two driver processes with different local caches (so only the store can keep them
    apart); returns their records, their stderr, and the MLflow URI they tracked to."""
    from posttrain.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    (tmp_path / "barrier").mkdir()
    procs = []
    for i in range(2):
        parent = Tracker.start_pipeline("outages", f"run-{i}", {}, uri)
        env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri,
               "POSTTRAIN_CACHE": str(tmp_path / f"cache-{i}"), "DRIVER_ROOT": root, "DRIVER_PARENT": parent.run_id,
               "DRIVER_BARRIER": str(tmp_path / "barrier"), "DRIVER_INDEX": str(i), "DRIVER_KEY": "same-key",
               "DRIVER_DATA": str(data_root), "DRIVER_SLOW": "5", "OMP_WAIT_POLICY": "PASSIVE"}
        procs.append(subprocess.Popen([sys.executable, str(driver)], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs], [err for _, err in outs], uri


def _assert_computed_once(records: list[dict], errs: list[str], uri: str) -> None:
    from mlflow.tracking import MlflowClient

    ran = [i for i, err in enumerate(errs) if "prepare_model: running (key same-key)" in err]
    assert len(ran) == 1, errs
    waiter = 1 - ran[0]
    assert "waiting for its output" in errs[waiter] and "published by another run" in errs[waiter]
    assert sum(err.count("PUBLISH") for err in errs) == 1
    assert not records[ran[0]]["cached"] and records[waiter]["cached"]
    for field in ("key", "uri", "content_hash", "config_hash", "mlflow_run_id"):
        assert records[0][field] == records[1][field], field
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outages").experiment_id
    assert len(client.search_runs([exp], filter_string="tags.stage = 'prepare_model'")) == 1


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_two_runs_on_one_s3_root_compute_a_stage_once(aws_env, data_root, tmp_path):
    moto = Moto().start()
    try:
        root = aws_env(moto.url) + "/shared"
        records, errs, uri = _two_runs(root, tmp_path, data_root, {"AWS_ENDPOINT_URL_S3": moto.url,
                                                                   "POSTTRAIN_LEASE_SECONDS": "8"})
        _assert_computed_once(records, errs, uri)
        from posttrain.storage import ArtifactStore

        store = ArtifactStore.from_uri(root)
        assert store.stage_manifest("prepare_model", "same-key")["content_hash"] == records[0]["content_hash"]
        assert not store.exists("stages/prepare_model/same-key/lease.json")
    finally:
        moto.stop()


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_two_runs_on_one_local_root_compute_a_stage_once(data_root, tmp_path):
    records, errs, uri = _two_runs(str(tmp_path / "artifacts"), tmp_path, data_root, {})
    _assert_computed_once(records, errs, uri)
    manifest = json.loads((tmp_path / "artifacts/stages/prepare_model/same-key/manifest.json").read_text())
    assert manifest["content_hash"] == records[0]["content_hash"]


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_a_stale_lease_is_taken_over(aws_env, tmp_path, monkeypatch):
    """A lease whose holder died on this machine is taken over at once; one not renewed for its
    lifetime (a holder on another machine) once it expires; a live one is waited on."""
    import boto3

    from posttrain.storage import ArtifactStore

    monkeypatch.setenv("POSTTRAIN_LEASE_SECONDS", "2")
    moto = Moto().start()
    try:
        store = ArtifactStore.from_uri(aws_env(moto.url))
        s3 = boto3.client("s3")
        dead = subprocess.Popen(["true"])
        dead.wait()
        for key, holder in (("dead", {"host": socket.gethostname(), "pid": dead.pid, "ttl": 600}),
                            ("expired", {"host": "elsewhere", "pid": 1, "ttl": 2})):
            s3.put_object(Bucket=store.bucket, Key=f"stages/rl_math/{key}/lease.json", Body=json.dumps(holder))
            lease = store.lease("rl_math", key)
            start = time.monotonic()
            assert lease.acquire(lambda: False)
            took = time.monotonic() - start
            assert took < 1.5 if key == "dead" else 2 <= took < 8, (key, took)
            lease.release()
            assert not store.exists(f"stages/rl_math/{key}/lease.json")

        holder = store.lease("rl_math", "live")
        assert holder.acquire(lambda: False)
        waiter = store.lease("rl_math", "live")
        published = threading.Event()
        threading.Timer(5.0, published.set).start()  # longer than the lease's lifetime: renewals keep it
        start = time.monotonic()
        assert not waiter.acquire(published.is_set)
        assert time.monotonic() - start >= 4.5 and holder.lost is None
        holder.check()
        holder.release()
    finally:
        moto.stop()
