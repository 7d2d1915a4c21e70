"""MLflow tracking: one parent run per pipeline run, one child run per stage (design.md §3).

Runs are addressed by id through ``MlflowClient`` rather than MLflow's fluent (thread-local)
API, because Prefect runs tasks in worker threads.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def metric_key(*parts: str | int) -> str:
    """Join parts with ``/`` into an MLflow-safe key: ``metric_key("eval", "aime2025", "avg_at_4")``.

    MLflow rejects ``@``: use ``pass_at_k``; other characters it rejects become ``_``.
    """
    return "/".join(_BAD_KEY.sub("_", str(p)) for p in parts)


class Tracker:
    """A thin wrapper over ``MlflowClient`` bound to one run id."""

    def __init__(self, run_id: str, uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = run_id

    @classmethod
    def start_pipeline(cls, experiment: str, run_name: str, tags: Mapping[str, str], uri: str | None = None) -> "Tracker":
        """Create the parent run of a pipeline run in ``experiment`` (created if missing)."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri or tracking_uri())
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        return cls(run.info.run_id, uri)

    def child(self, stage: str, tags: Mapping[str, str] | None = None) -> "Tracker":
        """Create a child run for ``stage`` under this run."""
        parent = self.client.get_run(self.run_id)
        run = self.client.create_run(parent.info.experiment_id, run_name=stage,
                                     tags={"mlflow.parentRunId": self.run_id, "stage": stage, **(tags or {})})
        return Tracker(run.info.run_id, self.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params (values stringified, cut to MLflow's 6000-character limit)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``; non-finite and non-numeric values are skipped."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), ts, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.run_id, status=status)


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
    if not uri.startswith(("http://", "https://")):
        return None
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
