"""The evaluation flow: any checkpoint, any registered benchmarks, one Prefect task per benchmark."""

from __future__ import annotations

import uuid

from prefect import flow

from posttrain.config import BenchmarkSpec, ClrSpec, SamplingSpec
from tasks.evaluation import benchmark_task, clr_task, report_task


@flow(name="evaluate", log_prints=True)
def evaluate(model: str, benchmarks: list[str], k: int | None = None, limit: int | None = None,
             sampling: SamplingSpec | None = None, data_root: str | None = None, artifacts: str | None = None,
             experiment: str = "posttrain-eval", clr_benchmarks: list[str] | None = None,
             clr: ClrSpec | None = None, after: str | None = None, shards: int = 1) -> dict:
    """Evaluate the checkpoint folder ``model`` on ``benchmarks`` with ``k`` samples per problem,
    and run CLR (``clr``, default settings when only ``clr_benchmarks`` is given) on ``clr_benchmarks``.
    ``after`` (an ISO date) keeps only problems dated after it (time-split evaluation). Each
    benchmark's problems are split into ``shards`` task runs (every n-th problem), merged after;
    a failed shard is retried alone.

    Returns ``{"table": {benchmark: figures}, "clr": {benchmark: figures}, "markdown": str, "run_id": str}``.
    """
    from posttrain.data import resolve_data_root
    from posttrain.eval.run import summarise_parts
    from posttrain.storage import default_root
    from posttrain.tracking import Tracker

    run_id = uuid.uuid4().hex[:12]
    artifacts = artifacts or default_root()
    sampling = sampling or SamplingSpec()
    tracker = Tracker.start_pipeline(experiment, f"eval-{run_id}", {"model": model, "run_id": run_id})
    table = {}
    for name in benchmarks:
        spec = BenchmarkSpec(name=name, k=k, limit=limit, after=after)
        parts = [benchmark_task.with_options(task_run_name=f"eval-{name}" + (f"-{i}-of-{shards}" if shards > 1 else ""))(
                 model, spec, sampling, resolve_data_root(data_root), artifacts, run_id, shard=(i, shards))
                 for i in range(shards)]
        table[name] = summarise_parts(parts)
    clr_table = {}
    for name in clr_benchmarks or []:
        clr_table[name] = clr_task.with_options(task_run_name=f"clr-{name}")(
            model, BenchmarkSpec(name=name, limit=limit), clr or ClrSpec(), sampling, resolve_data_root(data_root),
            artifacts, run_id)
    markdown = report_task(table, artifacts, run_id, tracker.run_id, clr_table or None)
    tracker.end("FINISHED")
    return {"table": table, "clr": clr_table, "markdown": markdown, "run_id": run_id, "mlflow_run_id": tracker.run_id}
