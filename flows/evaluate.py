"""The evaluation flow: any checkpoint, any registered benchmarks, one Prefect task per benchmark."""

from __future__ import annotations

import uuid

from prefect import flow

from posttrain.config import BenchmarkSpec, SamplingSpec
from tasks.evaluation import benchmark_task, report_task


@flow(name="evaluate", log_prints=True)
def evaluate(model: str, benchmarks: list[str], k: int = 4, limit: int | None = None,
             sampling: SamplingSpec | None = None, data_root: str | None = None, artifacts: str | None = None,
             experiment: str = "posttrain-eval") -> dict:
    """Evaluate the checkpoint folder ``model`` on ``benchmarks`` with ``k`` samples per problem.

    Returns ``{"table": {benchmark: figures}, "markdown": str, "run_id": str}``.
    """
    from posttrain.data import resolve_data_root
    from posttrain.storage import default_root
    from posttrain.tracking import Tracker

    run_id = uuid.uuid4().hex[:12]
    artifacts = artifacts or default_root()
    sampling = sampling or SamplingSpec()
    tracker = Tracker.start_pipeline(experiment, f"eval-{run_id}", {"model": model, "run_id": run_id})
    table = {}
    for name in benchmarks:
        spec = BenchmarkSpec(name=name, k=k, limit=limit)
        table[name] = benchmark_task.with_options(task_run_name=f"eval-{name}")(
            model, spec, sampling, resolve_data_root(data_root), artifacts, run_id)
    markdown = report_task(table, artifacts, run_id, tracker.run_id)
    tracker.end("FINISHED")
    return {"table": table, "markdown": markdown, "run_id": run_id, "mlflow_run_id": tracker.run_id}
