"""Outages and contention: the S3 server stopping mid-upload, the MLflow server down at start or
mid-stage, and two runs of the same pipeline at once (``make test-faults``).

Each test starts its own servers (not the session ones), since it stops and restarts them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# -- servers that can be stopped and restarted ----------------------------------------------------
def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start" + (f"; log: {log.read_text()[-2000:]}" if log else ""))
            time.sleep(0.2)


class Moto:
    """moto's S3 server in its own process on a fixed port; in memory, so a restart empties it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Moto":
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"{self.url}/moto-api/", self.proc, 60, "moto_server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class TcpProxy:
    """A TCP relay from a fixed loopback port to ``target_port``. ``down()`` closes the port and
    cuts every open connection (clients get resets, then 'connection refused'), ``up()`` reopens
    it: an outage of the endpoint while the server behind it keeps its state, as S3 would."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MlflowServer:
    """``mlflow server`` on a fixed port with a sqlite store in ``folder``; a restart keeps the store."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start it; returns the seconds it took to answer /health."""
        start = time.monotonic()
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "artifacts"), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        _wait_http(f"{self.url}/health", self.proc, 180, "mlflow server", log)
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: uvicorn runs a worker process
        self.proc.wait(timeout=15)


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


# -- 2. MLflow down at start ------------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.integration
def test_mlflow_down_at_start_fails_before_any_compute(tmp_path, monkeypatch, prefect_harness):
    from flows.post_training import post_training
    from posttrain.tracking import TrackingUnavailable

    monkeypatch.chdir(REPO)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    artifacts = tmp_path / "artifacts"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as failure:
        post_training("recipes/smoke.yaml", artifacts=str(artifacts))
    took = time.monotonic() - start
    message = str(failure.value)
    print(f"\nflow failed after {took:.2f} s: {message}")
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in message
    assert "start it" in message and "MLFLOW_TRACKING_URI" in message
    assert took < 10
    assert not artifacts.exists() and not (tmp_path / "cache" / "work").exists()


@pytest.mark.faults
def test_cli_run_reports_an_unreachable_tracking_server(tmp_path, monkeypatch):
    """``posttrain run`` says what is down before starting Prefect, without a traceback."""
    from typer.testing import CliRunner

    from posttrain.cli import app

    monkeypatch.chdir(REPO)
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--recipe", "recipes/smoke.yaml", "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 1, result.output
    assert f"http://127.0.0.1:{port} is not reachable" in result.output and "Traceback" not in result.output
    assert time.monotonic() - start < 10 and not (tmp_path / "a").exists()


@pytest.mark.faults
def test_tracking_check_times_out_on_a_server_that_never_answers():
    """A port that accepts connections but never answers: the check gives up after its timeout."""
    from posttrain.tracking import TrackingUnavailable, check_tracking_server

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=f"{uri} is not reachable .*timed out"):
            check_tracking_server(uri, timeout=1.0)
        assert time.monotonic() - start < 3
    check_tracking_server("sqlite:///nowhere/mlruns.db")  # a local store is not checked


# -- 3. MLflow down mid-stage -----------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_down_mid_stage_spools_and_every_metric_arrives_once(tiny_model, data_root, tmp_path, monkeypatch):
    """The server stops while a stage trains: logging returns at once, training finishes, a new
    stage's run is created later; after a restart on the same store the next pipeline start sends
    the spool, and every metric (name, step, value, timestamp), param, artifact and end status is
    there exactly once."""
    from mlflow.tracking import MlflowClient

    from posttrain.config import TrainSpec
    from posttrain.data import load_mixture
    from posttrain.sft import sft_pairs, train_sft
    from posttrain.tracking import Tracker, flush_spools, spool_dir, trainer_callback

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("POSTTRAIN_MLFLOW_RETRY_SECONDS", "1")
    produced: list[tuple[Tracker, str, int, float, int]] = []  # every metric a tracker was given
    real_submit = Tracker._submit

    def recording_submit(self, entry):
        if entry["op"] == "metrics":
            produced.extend((self, key, step, value, ts) for key, value, ts, step in entry["items"])
        real_submit(self, entry)

    monkeypatch.setattr(Tracker, "_submit", recording_submit)
    server = MlflowServer(tmp_path / "mlflow")
    server.folder.mkdir()
    started = server.start()
    uri = server.url

    parent = Tracker.start_pipeline("outages", "mid-stage", {}, uri)
    stage = parent.child("sft_stage1", {"stage_key": "k1"})
    stage.log_params({"lr": 0.01, "steps": 4})
    stage.log_metrics({"train/sft_stage1/before": 1.0}, 0)

    server.stop()
    latencies = []
    for step in range(1, 21):
        t = time.monotonic()
        stage.log_metrics({"train/sft_stage1/manual": step * 0.5}, step)
        latencies.append(time.monotonic() - t)
    records = load_mixture([{"source": "synthetic_digits", "limit": 16}], str(data_root))
    t = time.monotonic()
    summary = train_sft(sft_pairs(records), tiny_model, tmp_path / "model", TrainSpec(
        max_steps=4, learning_rate=1e-3, per_device_batch_size=4, logging_steps=1), max_length=64, packing=False,
        seed=0, callbacks=[trainer_callback(stage, "sft_stage1")])
    trained = time.monotonic() - t
    assert summary["steps"] == 4 and (tmp_path / "model" / "config.json").is_file()
    (tmp_path / "report.json").write_text('{"ok": true}')
    stage.log_artifact(tmp_path / "report.json")
    stage.end("FINISHED")
    nxt = parent.child("sft_stage2")  # the next stage starts while the server is still down
    assert nxt.pending
    nxt.log_metrics({"train/sft_stage2/loss": 2.5}, 1)
    nxt.end("FINISHED")
    parent.log_metrics({"pipeline/stages": 2})
    parent.end("FINISHED")
    spooled = sorted(p.name for p in spool_dir().glob("*.jsonl"))
    assert len(spooled) == 3, spooled  # the parent, the stage, and the stage created offline
    print(f"\nwhile down: {len(latencies)} log calls, slowest {max(latencies) * 1000:.0f} ms, "
          f"total {sum(latencies):.2f} s; 4 training steps {trained:.1f} s")
    assert max(latencies) < 2 and sum(latencies) < 5
    assert {step for _, key, step, _, _ in produced if key == "train/sft_stage1/loss"} == {1, 2, 3, 4}

    restarted = server.start()
    try:
        t = time.monotonic()
        Tracker.start_pipeline("outages", "next", {}, uri)  # the next pipeline run sends the spool
        flushed = time.monotonic() - t
        print(f"mlflow server start {started:.0f} s, restart {restarted:.0f} s; spool sent in {flushed:.2f} s")
        assert not list(spool_dir().glob("*.jsonl"))

        client = MlflowClient(uri)
        children = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
        runs = {"parent": client.get_run(parent.run_id), **{r.data.tags["stage"]: r for r in children}}
        assert set(runs) == {"parent", "sft_stage1", "sft_stage2"}
        assert all(r.info.status == "FINISHED" for r in runs.values())
        assert runs["sft_stage2"].data.tags["mlflow.parentRunId"] == parent.run_id
        assert not nxt.pending and nxt.run_id == runs["sft_stage2"].info.run_id
        assert runs["sft_stage1"].data.params == {"lr": "0.01", "steps": "4"}
        assert [a.path for a in client.list_artifacts(runs["sft_stage1"].info.run_id)] == ["report.json"]

        expected: dict[tuple[str, str], set] = {}
        for tracker, key, step, value, ts in produced:
            expected.setdefault((tracker.run_id, key), set()).add((step, value, ts))
        arrived = {(run, key): sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run, key))
                   for run, key in expected}
        assert arrived == {k: sorted(v) for k, v in expected.items()}  # all of them, none twice
        # a flush cut short after the server stored a batch sends it again: still stored once
        run = runs["sft_stage1"].info.run_id
        step, value, ts = sorted(expected[(run, "train/sft_stage1/manual")])[0]
        stage._send({"op": "metrics", "items": [["train/sft_stage1/manual", value, ts, step]]})
        assert len(client.get_metric_history(run, "train/sft_stage1/manual")) == 20
        assert flush_spools(uri) == {}
    finally:
        server.stop()


# -- 4. two runs at once --------------------------------------------------------------------------
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
