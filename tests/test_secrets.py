"""No credential reaches a log, MLflow, Prefect or the artifact store.

The smoke pipeline runs with planted values in every credential variable it may read (AWS,
MLflow, Prefect, a teacher's and a judge's API key), then :class:`SecretScan` looks for each
value, raw and base64-encoded at every byte alignment, in everything the run left behind:
captured logs (every logger at DEBUG) and stdout/stderr; Prefect's logs, artifacts, flow and
task runs (parameters, states) and blocks; MLflow runs (params, tags, metrics) and their artifact
files; every object in the artifact bucket (stage outputs, manifests, run records, Prefect task
results and cache records); and the local cache folder.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import pytest
from fakes import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]

# Letters and digits only (a few dashes), so JSON, URL and repr escaping leave them as they are.
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTED7Q2X9KZ4",
    "AWS_SECRET_ACCESS_KEY": "plantedAwsSecretKey0x7fQ2wE9rT4yU6iO8pA1sD3f",
    "AWS_SESSION_TOKEN": "plantedAwsSessionToken5mN8bV2cX4zL6kJ9hG1fD3sA7qW0eR",
    "MLFLOW_TRACKING_TOKEN": "plantedMlflowToken3kP7wQ1zX5vB9nM2",
    "MLFLOW_TRACKING_USERNAME": "plantedMlflowUser8rT2yU4i",
    "MLFLOW_TRACKING_PASSWORD": "plantedMlflowPassword6gH3jK9lZ1xC",
    "PREFECT_API_KEY": "pnu_plantedPrefectKey4dF8gH2jK6lQ0wE3rT",
    "POSTTRAIN_TEST_TEACHER_KEY": "sk-plantedTeacherKey-9aS2dF5gH8jK1lZ4",
    "POSTTRAIN_TEST_JUDGE_KEY": "sk-plantedJudgeKey-7qW3eR6tY9uI2oP5",
}


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------
def secret_forms(value: str) -> dict[str, bytes]:
    """Byte strings whose presence reveals ``value``: the value itself, and the part of its
    standard and URL-safe base64 that any blob containing it at byte offset 0, 1 or 2 (mod 3)
    carries whatever surrounds it (so a value inside a pickled, base64'd result is found too)."""
    raw = value.encode()
    forms = {"raw": raw}
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for offset in range(3):
            encoded = encode(b"\0" * offset + raw)
            start = 4 if offset else 0  # the first quantum mixes in the bytes before the value
            end = len(encoded) - (4 if (offset + len(raw)) % 3 else 0)  # the last, those after it
            forms[f"{name}@{offset}"] = encoded[start:end]
    return forms


@dataclass
class SecretScan:
    """Looks for planted secret values in texts and files; counts what it scanned, by kind."""

    secrets: Mapping[str, str]
    scanned: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    hits: list[tuple[str, str, str, str]] = field(default_factory=list)  # (kind, where, secret, context)

    def __post_init__(self):
        self._forms = {name: secret_forms(value) for name, value in self.secrets.items()}

    def scan(self, kind: str, where: str, data: bytes | str) -> None:
        """Record every planted value (in any of its forms) found in ``data``."""
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        self.scanned[kind] += 1
        self.sizes[kind] += len(blob)
        for name, forms in self._forms.items():
            for form, needle in forms.items():
                at = blob.find(needle)
                if at >= 0:
                    context = blob[max(0, at - 120): at + len(needle) + 60].replace(needle, f"<{name}>".encode())
                    self.hits.append((kind, where, f"{name} ({form})", context.decode("utf-8", "replace")))

    def scan_json(self, kind: str, where: str, obj) -> None:
        self.scan(kind, where, json.dumps(obj, default=str, sort_keys=True))

    def scan_tree(self, kind: str, root: Path) -> None:
        """Every file under ``root``."""
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
            self.scan(kind, str(path.relative_to(root)), path.read_bytes())

    def assert_clean(self) -> None:
        """Fail listing how many leaks each kind of place holds, and the first ones in full."""
        if self.hits:
            summary = Counter((kind, secret) for kind, _, secret, _ in self.hits)
            first = {}
            for kind, where, secret, context in self.hits:
                first.setdefault((kind, secret), f"{kind} {where}: {secret} in ...{context}...")
            raise AssertionError(f"{len(self.hits)} leak(s):\n" + "\n".join(
                f"{n:6d} x {kind}: {secret}" for (kind, secret), n in summary.most_common())
                + "\nfirst of each:\n" + "\n".join(first.values()))

    def report(self) -> str:
        return ", ".join(f"{kind}: {n} ({self.sizes[kind] / 1e6:.1f} MB)" for kind, n in sorted(self.scanned.items()))


def test_secret_forms_find_a_value_raw_and_inside_base64_at_any_alignment():
    import pickle

    value = PLANTED["AWS_SESSION_TOKEN"].encode()
    blobs = [b"log line " + value + b" end"]
    blobs += [b"junk" + encode(prefix + value + b"tail") + b"junk"
              for prefix in (b"", b"x", b"xy", b"xyz", b"header: {")
              for encode in (base64.b64encode, base64.urlsafe_b64encode)]
    blobs.append(json.dumps({"data": base64.b64encode(pickle.dumps({"k": value.decode()})).decode()}).encode())
    blobs.append(b"Authorization: Basic " + base64.b64encode(b"user:" + value))
    for blob in blobs:
        scan = SecretScan({"KEY": value.decode()})
        scan.scan("blob", "x", blob)
        assert scan.hits and scan.scanned["blob"] == 1, blob
        with pytest.raises(AssertionError, match="KEY"):
            scan.assert_clean()
    clean = SecretScan({"KEY": value.decode()})
    clean.scan("other", "x", base64.b64encode(value[:-3]) + value[1:] + b" and " + value[:-1])
    clean.assert_clean()


def test_secret_values_are_credential_variables_url_passwords_and_registered_keys():
    from posttrain.redact import display_url, redact, register_secret, secret_values

    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value-1", "MY_PROVIDER_API_KEY": "provider-key-2",
           "SOME_TOKEN": "token-value-3", "MLFLOW_TRACKING_URI": "https://user:uri-password-4@mlflow.example:5000",
           "AWS_SESSION_TOKEN": "short", "POSTTRAIN_CACHE": "/a/long/cache/path", "PATH": "/usr/bin:/bin"}
    register_secret("registered-key-5")
    values = secret_values(env)
    assert set(values) >= {"s3cr3t-value-1", "provider-key-2", "token-value-3", "uri-password-4", "registered-key-5"}
    assert not {"short", "/a/long/cache/path", "/usr/bin:/bin"} & set(values)
    assert redact("a provider-key-2 and uri-password-4 b", values) == "a *** and *** b"
    assert display_url("https://user:tok@mlflow.example:5000/#/runs/1") == "https://mlflow.example:5000/#/runs/1"
    assert display_url("http://127.0.0.1:5000/x") == "http://127.0.0.1:5000/x"


def test_log_records_carry_no_credential_whichever_handler_reads_them(monkeypatch, caplog):
    import tasks  # noqa: F401  (installs the redaction, as every flow process does)

    key = PLANTED["PREFECT_API_KEY"]
    monkeypatch.setenv("PREFECT_API_KEY", key)
    logger = logging.getLogger("posttrain.test_secrets")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("headers %s", {"Authorization": f"Bearer {key}"})
        try:
            raise RuntimeError(f"refused key {key}")
        except RuntimeError:
            logger.exception("call failed")
    assert len(caplog.records) == 2 and "Bearer ***" in caplog.records[0].getMessage()
    assert key not in caplog.text and "refused key ***" in caplog.text


def test_stage_summary_links_mlflow_without_the_tracking_uri_credentials(monkeypatch):
    from posttrain.pipeline import StageRecord
    from tasks.stages import _summary_markdown

    import mlflow.tracking

    class FakeClient:  # the run's experiment, as a tracking server would answer
        def __init__(self, tracking_uri):
            pass

        def get_run(self, run_id):
            from types import SimpleNamespace

            return SimpleNamespace(info=SimpleNamespace(experiment_id="7"))

    token = PLANTED["MLFLOW_TRACKING_TOKEN"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://u:{token}@mlflow.example")
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", FakeClient)
    record = StageRecord(stage="sft_stage1", key="k", uri="s3://b/x", config_hash="c", content_hash="h",
                         mlflow_run_id="abc", summary={"steps": 2})
    markdown = _summary_markdown(record)
    assert "(https://mlflow.example/#/experiments/7/runs/abc)" in markdown and token not in markdown


# ---------------------------------------------------------------------------------------------
# A teacher and a judge behind an OpenAI-compatible stub that records the Authorization headers
# ---------------------------------------------------------------------------------------------
def score_7(body, headers):
    """A judge's and a teacher's answer alike: ``n`` choices reading ``Score: 7``."""
    return 200, {"id": "stub", "object": "chat.completion", "choices": [
        {"index": i, "message": {"role": "assistant", "content": "Score: 7"}, "finish_reason": "stop"}
        for i in range(body.get("n", 1))]}, {}


def auth_by_model(fake: FakeOpenAI) -> dict[str, set[str]]:
    """The ``Authorization`` headers the fake server received, per requested model."""
    seen: dict[str, set[str]] = {}
    for request in fake.requests:
        seen.setdefault(request["body"]["model"], set()).add(request["headers"].get("Authorization", ""))
    return seen


# ---------------------------------------------------------------------------------------------
# Capture, then scan each place a run writes to
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def every_logger_at_debug(caplog) -> Iterator[None]:
    """Every logger at DEBUG into ``caplog``, those that do not propagate to the root included.

    Libraries that configure their loggers on import are imported first, so theirs are set too.
    """
    import botocore  # noqa: F401
    import mlflow  # noqa: F401
    import prefect_aws  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    import vllm  # noqa: F401

    caplog.set_level(logging.DEBUG)
    loggers = [lg for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level) for lg in loggers]
    # Prefect's logging set-up replaces the root's handlers, pytest's capture among them: put it back
    attached = [lg for lg in [logging.root, *loggers]
                if (lg is logging.root or not lg.propagate) and caplog.handler not in lg.handlers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    for lg in attached:
        lg.addHandler(caplog.handler)
    try:
        yield
        assert caplog.handler in logging.root.handlers, "something replaced the root logger's handlers"
    finally:
        for lg in attached:
            lg.removeHandler(caplog.handler)
        for lg, level in saved:
            lg.setLevel(level)


def scan_logs(scan: SecretScan, caplog, capfd) -> None:
    """Every captured record (message, traceback, attributes), the formatted capture, stdout and stderr."""
    # the capture saw the libraries that send credentials (botocore's wire trace) and the run loggers
    assert {"botocore.endpoint", "prefect.flow_runs", "prefect.task_runs", "posttrain.pipeline"} <= {
        r.name for r in caplog.records}
    for record in caplog.records:
        extra = {k: v for k, v in vars(record).items() if k not in ("msg", "args")}
        scan.scan("log records", record.name, f"{record.getMessage()} {record.exc_text or ''} {extra!r}")
    scan.scan("log text", "caplog.text", caplog.text)
    out, err = capfd.readouterr()
    scan.scan("stdout/stderr", "stdout", out)
    scan.scan("stdout/stderr", "stderr", err)


def _pages(read, **kwargs) -> list:
    out, offset = [], 0
    while page := read(**kwargs, limit=200, offset=offset):
        out += page
        offset += len(page)
    return out


def scan_prefect(scan: SecretScan, flow_run_id) -> set[str]:
    """The flow run, its task runs and their states, its logs and artifacts, and every block
    document; returns the types of the run's artifacts."""
    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, LogFilter, LogFilterFlowRunId)
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=60)  # the run's last logs are still queued for the API
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        scan.scan("prefect flow runs", str(flow_run.id), flow_run.model_dump_json())
        task_runs = _pages(client.read_task_runs, flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        for task_run in task_runs:
            scan.scan("prefect task runs", task_run.name, task_run.model_dump_json())
            for state in client.read_task_run_states(task_run.id):
                scan.scan("prefect task run states", task_run.name, state.model_dump_json())
        logs = _pages(client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        for entry in logs:
            scan.scan("prefect logs", entry.name, entry.model_dump_json())
        artifacts = _pages(client.read_artifacts,
                           artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        for artifact in artifacts:
            scan.scan(f"prefect {artifact.type} artifacts", str(artifact.key), artifact.model_dump_json())
        for document in _pages(client.read_block_documents, include_secrets=True):
            scan.scan("prefect block documents", str(document.name), document.model_dump_json())
    assert len(task_runs) >= 9 and logs
    return {a.type for a in artifacts}


def scan_mlflow(scan: SecretScan, uri: str, experiment: str, dst: Path) -> None:
    """Every run of ``experiment`` (info, params, tags, metrics) and every artifact file it holds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    scan.scan_json("mlflow experiments", experiment, dict(exp))
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for run in runs:
        scan.scan_json("mlflow runs", run.info.run_id, run.to_dictionary())
        folder = dst / run.info.run_id
        folder.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(folder))
        scan.scan_tree("mlflow artifact files", folder)
    assert len(runs) >= 10


def scan_bucket(scan: SecretScan, bucket: str) -> None:
    """Every object in the bucket: stage outputs, manifests, run records, Prefect results and cache records."""
    import boto3

    s3 = boto3.client("s3")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])]
    for key in keys:
        kind = "bucket prefect-results" if "/prefect-results/" in f"/{key}" else "bucket objects"
        scan.scan(kind, key, s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert scan.scanned["bucket prefect-results"] >= 9, sorted({"/".join(k.split("/")[:3]) for k in keys})


# ---------------------------------------------------------------------------------------------
# The smoke pipeline with planted credentials
# ---------------------------------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.integration
def test_planted_secrets_never_leave_the_places_they_are_used(s3_env, mlflow_server, prefect_harness, tmp_path,
                                                             monkeypatch, caplog, capfd):
    import boto3
    from prefect.settings import PREFECT_API_KEY, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.post_training import post_training

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("POSTTRAIN_CODE_VERSION", "secrets-test")  # same keys in both runs, whoever edits posttrain/
    for name, value in PLANTED.items():  # the test servers accept any credentials
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # s3_env's session holds the credentials it first read
    frozen = boto3.client("s3")._request_signer._credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.token) == (PLANTED["AWS_ACCESS_KEY_ID"], PLANTED["AWS_SESSION_TOKEN"])
    stub = FakeOpenAI([score_7])
    overrides = [
        "sft_stage1.teacher.teachers=[{model: input, engine: hf}, "
        f"{{model: stub-teacher, url: '{stub.url}', api_key_env: POSTTRAIN_TEST_TEACHER_KEY}}]",
        f"instruct_rl.judge={{model: stub-judge, url: '{stub.url}', api_key_env: POSTTRAIN_TEST_JUDGE_KEY}}",
    ]
    artifacts = f"{s3_env}/pipeline"
    scan = SecretScan(PLANTED)
    settings = {PREFECT_API_KEY: PLANTED["PREFECT_API_KEY"], PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-storage"}
    try:
        with temporary_settings(settings), every_logger_at_debug(caplog):
            assert PREFECT_API_KEY.value() == PLANTED["PREFECT_API_KEY"]
            # Twice: the second run reads the stages' Prefect cache records (or, where the first
            # left none, writes them)
            states = [post_training("recipes/smoke.yaml", overrides=overrides, artifacts=artifacts, return_state=True)
                      for _ in range(2)]
            results = [state.result() for state in states]
            scan_logs(scan, caplog, capfd)
            kinds = set().union(*(scan_prefect(scan, state.state_details.flow_run_id) for state in states))
    finally:
        stub.close()
    assert not any(r["cached"] for r in results[0]["stages"].values())
    assert all(r["cached"] for r in results[1]["stages"].values())
    assert kinds >= {"markdown", "table", "progress"}
    # the keys reached the endpoints they are for, and only as a bearer token
    auth = auth_by_model(stub)
    assert auth["stub-teacher"] == {f"Bearer {PLANTED['POSTTRAIN_TEST_TEACHER_KEY']}"}
    assert auth["stub-judge"] == {f"Bearer {PLANTED['POSTTRAIN_TEST_JUDGE_KEY']}"}
    for result in results:
        scan.scan_json("flow results", result["run"], result)
    scan_mlflow(scan, mlflow_server, "posttrain-smoke", tmp_path / "mlflow-artifacts")
    scan_bucket(scan, s3_env.removeprefix("s3://"))
    scan.scan_tree("local files", tmp_path / "cache")
    scan.scan_tree("local files", tmp_path / "prefect-storage")
    print(f"scanned {scan.report()}")
    scan.assert_clean()
