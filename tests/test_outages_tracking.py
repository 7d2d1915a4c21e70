"""Outages of the tracking server: MLflow down at the start of a run, and down in the middle of
a stage (``make test-faults``). Storage outages and contention: test_outages_storage.py.

Each test starts its own servers (not the session ones), since it stops and restarts them.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from conftest import free_port
from outage_servers import MlflowServer

REPO = Path(__file__).resolve().parents[1]


# -- 1. MLflow down at start ------------------------------------------------------------------------
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


# -- 2. MLflow down mid-stage -----------------------------------------------------------------------
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
