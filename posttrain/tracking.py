"""MLflow tracking: one parent run per pipeline run, one child run per stage (design.md §3).

Runs are addressed by id through ``MlflowClient`` rather than MLflow's fluent (thread-local)
API, because Prefect runs tasks in worker threads.

Faults (tracking on an ``http(s)://`` server): :func:`check_tracking_server` fails fast before a
run starts when the server does not answer. Once running, the tracker never stalls or fails
training because of the server: each call gets a short timeout (``POSTTRAIN_MLFLOW_TIMEOUT``, 10 s,
one retry) and what cannot be sent (run creation, params, metrics, artifacts, the final status)
is appended to a local spool, ``<POSTTRAIN_CACHE>/mlflow-spool/<run id>.jsonl``, sent in order on
the next call that reaches the server, at the end of each stage and pipeline, and at the start
of the next pipeline run (or ``python -m posttrain.tracking flush``). After a failure the tracker
stops calling the server for ``POSTTRAIN_MLFLOW_RETRY_SECONDS`` (30) and only spools. A resent
entry is idempotent (metrics keep their timestamp, which MLflow deduplicates on), so a call that
timed out after the server stored it is not counted twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")
PENDING = "pending-"  # id prefix of a run created while the server was unreachable
log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer; the message names its URI and what to do."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def metric_key(*parts: str | int) -> str:
    """Join parts with ``/`` into an MLflow-safe key: ``metric_key("eval", "aime2025", "avg_at_4")``.

    MLflow rejects ``@``: use ``pass_at_k``; other characters it rejects become ``_``.
    """
    return "/".join(_BAD_KEY.sub("_", str(p)) for p in parts)


def _remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast when tracking goes to an ``http(s)://`` server that does not answer ``/health``
    within ``timeout`` seconds (MLflow's own client would retry for minutes). Other URIs (sqlite,
    a folder) are not checked.

    Raises:
        TrackingUnavailable: naming the URI, the error, and how to fix it.
    """
    import http.client
    import urllib.error
    import urllib.request

    import base64
    from urllib.parse import unquote, urlsplit

    from posttrain.redact import display_url

    uri = uri or tracking_uri()
    if not _remote(uri):
        return
    # credentials in the URI go as a Basic header, never into a request line or a message
    parts, shown = urlsplit(uri), display_url(uri)
    request = urllib.request.Request(f"{shown.rstrip('/')}/health")
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    uri = shown
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:  # it answered: 401/403/404 mean a server is there
        status = e.code
    except (OSError, http.client.HTTPException) as e:  # refused, DNS, timeout, reset
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({reason}, after {time.monotonic() - start:.1f} s): "
            f"start it (mlflow server --host ... --port ...) or set MLFLOW_TRACKING_URI to a running server or a "
            f"local store such as {DEFAULT_TRACKING_URI}; nothing was run") from e
    if status >= 500:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answered HTTP {status} on /health: fix or restart it, "
                                  f"or set MLFLOW_TRACKING_URI to another server or to {DEFAULT_TRACKING_URI}; "
                                  f"nothing was run")


# -- short MLflow HTTP calls --------------------------------------------------------------------
_HTTP_LOCK = threading.RLock()
_DOWN_UNTIL: dict[str, float] = {}  # uri -> monotonic time before which the tracker only spools
_RESOLVED: dict[str, str] = {}  # pending id -> the run id the server gave it


@contextlib.contextmanager
def _short_requests() -> Iterator[None]:
    """MLflow reads its HTTP retry settings from the environment on every request: narrow them
    around the tracker's own calls (one quick retry, ``POSTTRAIN_MLFLOW_TIMEOUT`` seconds)."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("POSTTRAIN_MLFLOW_TIMEOUT", "10")}
    with _HTTP_LOCK:
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _unavailable(e: BaseException) -> bool:
    """Whether an MLflow client error means "the server did not answer" (spool and resend) rather
    than "the server refused this request" (a bug: raise)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    return isinstance(e, MlflowException) and e.get_http_status_code() >= 500


def _offline(uri: str) -> bool:
    return time.monotonic() < _DOWN_UNTIL.get(uri, 0.0)


def _mark_offline(uri: str, error: BaseException, spool: Path) -> None:
    first = not _offline(uri)
    _DOWN_UNTIL[uri] = time.monotonic() + float(os.environ.get("POSTTRAIN_MLFLOW_RETRY_SECONDS", "30"))
    if first:
        log.warning("MLflow server %s unreachable (%s): tracking continues into %s and is sent when it answers",
                    uri, str(error).splitlines()[0][:300], spool.parent)


def spool_dir() -> Path:
    """Where unsent tracking calls wait: ``<POSTTRAIN_CACHE>/mlflow-spool``."""
    from posttrain.storage import local_cache_dir

    return local_cache_dir() / "mlflow-spool"


class Tracker:
    """A thin wrapper over ``MlflowClient`` bound to one run id; on a tracking server, calls the
    server cannot take are spooled and resent (module docstring)."""

    def __init__(self, run_id: str, uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self._id = run_id
        self.remote = _remote(self.uri)
        self.spool = spool_dir() / f"{run_id}.jsonl"
        self._create: dict | None = None  # a pending run's creation entry, always first in its spool

    @property
    def run_id(self) -> str:
        """The run's id; ``pending-...`` while it was created offline and not yet sent."""
        return _RESOLVED.get(self._id, self._id)

    @property
    def pending(self) -> bool:
        return self.run_id.startswith(PENDING)

    @classmethod
    def start_pipeline(cls, experiment: str, run_name: str, tags: Mapping[str, str], uri: str | None = None) -> "Tracker":
        """Create the parent run of a pipeline run in ``experiment`` (created if missing), then
        send what earlier runs left in the spool for this server.

        Raises:
            TrackingUnavailable: if the tracking server does not answer.
        """
        from mlflow.tracking import MlflowClient

        uri = uri or tracking_uri()
        client = MlflowClient(tracking_uri=uri)
        try:
            with _short_requests() if _remote(uri) else contextlib.nullcontext():
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
                run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        except Exception as e:
            if _remote(uri) and _unavailable(e):
                raise TrackingUnavailable(f"MLflow tracking server {uri} did not answer while creating the run of "
                                          f"{run_name!r}: {str(e).splitlines()[0][:300]}") from e
            raise
        if _remote(uri):
            flush_spools(uri)
        return cls(run.info.run_id, uri)

    def child(self, stage: str, tags: Mapping[str, str] | None = None) -> "Tracker":
        """Create a child run for ``stage`` under this run; while the server does not answer, a
        pending one (its creation is spooled with the rest, tagged so it is created only once)."""
        tags = {"mlflow.parentRunId": self.run_id, "stage": stage, **(tags or {})}
        if not self.remote:
            parent = self.client.get_run(self.run_id)
            return Tracker(self.client.create_run(parent.info.experiment_id, run_name=stage, tags=tags).info.run_id,
                           self.uri)
        run = Tracker(f"{PENDING}{uuid.uuid4().hex}", self.uri)
        run._create = {"op": "create_run", "parent": self.run_id, "run_name": stage, "tags": tags,
                       "start_time": int(time.time() * 1000), "spool_id": run._id}
        run._submit(run._create)
        if run.pending:
            log.warning("%s: MLflow server %s unreachable: its run is created when the server answers (spool %s)",
                        stage, self.uri, run.spool)
        return run

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params (values stringified, cut to MLflow's 6000-character limit)."""
        items = {k: str(v)[:6000] for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 100):
            self._submit({"op": "params", "items": {k: items[k] for k in keys[i : i + 100]}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``; non-finite and non-numeric values are skipped."""
        ts = int(time.time() * 1000)
        items = [[metric_key(k), float(v), ts, step or 0] for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(items), 500):
            self._submit({"op": "metrics", "items": items[i : i + 500]})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._submit({"op": "artifact", "file": str(path), "artifact_path": artifact_path})

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``FINISHED``, ``FAILED`` or ``KILLED``, after sending what is spooled
        (of this run and, for a pipeline's parent run, of its stages). What the server still cannot
        take stays in the spool, and a warning says where."""
        self._submit({"op": "end", "status": status, "end_time": int(time.time() * 1000)})
        if not self.remote:
            return
        left = {p: n for p, n in flush_spools(self.uri).items() if n}
        if left:
            log.warning("MLflow server %s unreachable: %d tracking entries of %d run(s) kept in %s; the next posttrain "
                        "run against %s sends them (or: python -m posttrain.tracking flush)",
                        self.uri, sum(left.values()), len(left), spool_dir(), self.uri)

    def flush(self) -> bool:
        """Send this run's spooled entries; True when none are left."""
        if not self.remote:
            return True
        with self._locked():
            return self._flush_locked()

    # -- sending and spooling -------------------------------------------------------------------
    def _submit(self, entry: dict) -> None:
        """Send ``entry`` now if nothing older waits and the server answers, else spool it."""
        if not self.remote:
            self._send(entry)
            return
        with self._locked():
            if not _offline(self.uri) and self._flush_locked():
                try:
                    with _short_requests():
                        self._send(entry)
                    if entry["op"] == "end":  # a pending run's spool held only its creation entry
                        self._discard()
                    return
                except Exception as e:
                    if not _unavailable(e):
                        raise
                    _mark_offline(self.uri, e, self.spool)
            self._append(entry)

    def _send(self, entry: dict) -> None:
        from mlflow.entities import Metric, Param

        op = entry["op"]
        if op == "create_run":
            self._resolve(entry)
            return
        if self.pending:
            raise RuntimeError(f"run {self._id} was never created: its spool {self.spool} lacks its creation entry")
        if op == "metrics":
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in entry["items"]])
        elif op == "params":
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in entry["items"].items()])
        elif op == "artifact":
            self.client.log_artifact(self.run_id, entry["file"], entry["artifact_path"])
        elif op == "end":
            self.client.set_terminated(self.run_id, status=entry["status"], end_time=entry["end_time"])
        else:
            raise ValueError(f"unknown tracking entry {op!r} in {self.spool}")

    def _resolve(self, entry: dict) -> None:
        """Create a run spooled while the server was down, once: a run already tagged with its
        pending id (sent by an earlier flush that did not finish) is reused."""
        key = entry["spool_id"]
        if key in _RESOLVED:
            return
        exp_id = self.client.get_run(entry["parent"]).info.experiment_id
        found = self.client.search_runs([exp_id], filter_string=f"tags.`posttrain.spool_id` = '{key}'", max_results=1)
        run = found[0] if found else self.client.create_run(
            exp_id, start_time=entry["start_time"], run_name=entry["run_name"],
            tags={**entry["tags"], "posttrain.spool_id": key})
        _RESOLVED[key] = run.info.run_id

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This run's spool, locked against other trackers of the run (threads and processes)."""
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> list[dict]:
        if not self.spool.is_file():
            return []
        return [json.loads(line) for line in self.spool.read_text().splitlines() if line.strip()]

    def _write(self, entries: list[dict]) -> None:
        if not entries:
            self._discard()
            return
        tmp = self.spool.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(tmp, self.spool)

    def _discard(self) -> None:
        self.spool.unlink(missing_ok=True)
        shutil.rmtree(self.spool.with_suffix(".files"), ignore_errors=True)

    def _append(self, entry: dict) -> None:
        """Add ``entry`` to the spool (an artifact is copied in, since its file may go away)."""
        entry = {**entry, "uri": self.uri}
        if entry["op"] == "create_run":
            self._write([entry])
            return
        if entry["op"] == "artifact":
            copy = self.spool.with_suffix(".files") / uuid.uuid4().hex / Path(entry["file"]).name
            copy.parent.mkdir(parents=True)
            shutil.copyfile(entry["file"], copy)
            entry["file"] = str(copy)
        if self._create is not None and not self.spool.is_file():
            self._write([{**self._create, "uri": self.uri}])
        with open(self.spool, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _flush_locked(self) -> bool:
        """Send the spool oldest first, stopping at the first call the server does not take;
        True when nothing is left. An entry the server refuses (a 4xx: it would never be taken)
        is logged and moved to ``<run>.rejected.jsonl``."""
        entries = self._read()
        if not entries:
            return True
        if _offline(self.uri):
            return False
        done, left = [], list(entries)
        while left:
            n = 1  # consecutive metric entries go in one call (MLflow takes 1000 metrics per batch)
            while (n < len(left) and left[0]["op"] == left[n]["op"] == "metrics"
                   and sum(len(e["items"]) for e in left[: n + 1]) <= 1000):
                n += 1
            entry = left[0] if n == 1 else {"op": "metrics", "items": [i for e in left[:n] for i in e["items"]]}
            try:
                with _short_requests():
                    self._send(entry)
            except Exception as e:
                if _unavailable(e):
                    _mark_offline(self.uri, e, self.spool)
                    break
                log.error("MLflow server %s refused a spooled %s entry of run %s (%s): kept in %s", self.uri,
                          entry["op"], self.run_id, e, self.spool.with_suffix(".rejected.jsonl"))
                with open(self.spool.with_suffix(".rejected.jsonl"), "a") as f:
                    f.write(json.dumps(entry) + "\n")
            done += left[:n]
            del left[:n]
        for entry in done:
            if entry["op"] == "artifact":
                shutil.rmtree(Path(entry["file"]).parent, ignore_errors=True)
        ended = any(e["op"] == "end" for e in done)
        creation = [e for e in entries if e["op"] == "create_run"]
        # a pending run keeps its creation entry first until it ends, so later entries can resolve it
        keep = creation if creation and not ended and (not left or left[0] is not creation[0]) else []
        self._write(keep + left if left else keep)
        if done and not left:
            log.info("sent %d spooled tracking entries of run %s to %s", len(done), self.run_id, self.uri)
        return not left


def flush_spools(uri: str | None = None) -> dict[str, int]:
    """Send every spooled run (of tracking server ``uri``, or of all); returns ``{spool file: entries
    left}``."""
    left: dict[str, int] = {}
    folder = spool_dir()
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        if path.name.endswith(".rejected.jsonl"):
            continue
        try:
            first = json.loads(path.read_text().split("\n", 1)[0])
        except (OSError, json.JSONDecodeError):  # flushed away meanwhile, or being rewritten
            continue
        if uri is not None and first.get("uri") != uri:
            continue
        tracker = Tracker(path.stem, first["uri"])
        with tracker._locked():
            tracker._flush_locked()
            entries = tracker._read()
        left[str(path)] = sum(e["op"] != "create_run" for e in entries)
    return left


def flatten(prefix: str, tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}`` for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(key, v))
        else:
            out[key] = v
    return out


def trainer_callback(tracker: Tracker, stage: str):
    """A ``transformers.TrainerCallback`` that logs every trainer log line as ``train/<stage>/<name>``."""
    from transformers import TrainerCallback

    class _MlflowStepCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                tracker.log_metrics({metric_key("train", stage, k): v for k, v in logs.items()}, step=state.global_step)

    return _MlflowStepCallback()


def progress_callback(report, every_seconds: float = 5.0):
    """A ``transformers.TrainerCallback`` that calls ``report(global_step / max_steps)`` (0..1) at
    most every ``every_seconds`` and at the last step (a Prefect progress artifact, say)."""
    import time

    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        last = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if state.max_steps and (now - self.last >= every_seconds or state.global_step >= state.max_steps):
                self.last = now
                report(min(1.0, state.global_step / state.max_steps))

    return _ProgressCallback()


def run_url(run_id: str, uri: str | None = None) -> str | None:
    """The MLflow UI address of a run when tracking goes to a server (``http(s)://``), else None."""
    uri = uri or tracking_uri()
    if not _remote(uri) or run_id.startswith(PENDING) or _offline(uri):
        return None
    from mlflow.tracking import MlflowClient

    try:
        with _short_requests():
            experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception as e:  # a link is a convenience: never fail a stage for it
        if not _unavailable(e):
            raise
        return None
    from posttrain.redact import display_url

    return f"{display_url(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


if __name__ == "__main__":  # python -m posttrain.tracking flush [URI]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if sys.argv[1:2] != ["flush"]:
        sys.exit("usage: python -m posttrain.tracking flush [TRACKING_URI]")
    remaining = {p: n for p, n in flush_spools(sys.argv[2] if len(sys.argv) > 2 else None).items() if n}
    print(f"{sum(remaining.values())} entries left in {len(remaining)} spool file(s) under {spool_dir()}")
    sys.exit(1 if remaining else 0)
