"""Test settings: offline, quiet, and shared fixtures (tiny model, S3 server, Prefect harness)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Before anything imports torch, transformers or prefect.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("POSTTRAIN_DATA", REPO.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``url`` until it answers; kill ``proc`` and raise ``RuntimeError(what)`` (with the
    tail of ``log``) if it exits or ``timeout`` seconds pass first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(what + (f"; log: {log.read_text()[-2000:]}" if log else "")) from None
            time.sleep(0.3)


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert DATA.is_dir(), f"shared data not found at {DATA}; set POSTTRAIN_DATA"
    return DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, data_root) -> Path:
    """A random 2-layer Qwen2 (head_dim 32) with a tokenizer trained in-process on real prompts."""
    from posttrain.config import ModelSpec
    from posttrain.data import load_mixture
    from posttrain.modeling import prepare_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    records = load_mixture([{"source": "synthetic_digits", "limit": 64}, {"source": "gsm8k_train", "limit": 200}],
                           str(data_root))
    prepare_model(ModelSpec(source="tiny"), out, [r.prompt + "\n" + (r.reference.solution or "") for r in records])
    return out


@pytest.fixture(scope="session")
def policy(tiny_model, data_root, tmp_path_factory) -> Path:
    """The tiny model after a short SFT on the synthetic task (as in recipes/smoke.yaml), so its
    sampled answers are partly right and a graded reward varies within a group."""
    from posttrain.config import TrainSpec
    from posttrain.data import load_mixture
    from posttrain.sft import sft_pairs, train_sft

    records = load_mixture([{"source": "synthetic_digits", "limit": 64}, {"source": "synthetic_digits_1", "limit": 32}],
                           str(data_root), seed=1)
    out = tmp_path_factory.mktemp("policy") / "model"
    train = TrainSpec(max_steps=30, learning_rate=1e-2, per_device_batch_size=8, lr_scheduler_type="constant")
    train_sft(sft_pairs(records), tiny_model, out, train, max_length=128, packing=False, seed=0, callbacks=[])
    return out


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3-compatible server on a free loopback port, in its own process; yields its URL.

    Not in-process (``ThreadedMotoServer``): that imports Flask, whose context proxies break
    vLLM's start-up scan of loaded modules.
    """
    import subprocess
    import sys

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/", proc, 60, "moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS variables pointing boto3 at the test server, and a fresh bucket; yields ``s3://bucket``."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"posttrain-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, artifacts served from a temporary folder) on a free
    loopback port, in its own process; yields its URL. Healthy after about 20 s here."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, 120, "mlflow server did not start", tmp / "server.log")
    yield url
    import signal

    os.killpg(proc.pid, signal.SIGTERM)  # the server's own group: uvicorn runs worker processes
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
