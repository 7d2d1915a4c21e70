"""Prefect tasks of the evaluation flow: one task per benchmark, each writing to the artifact store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from posttrain.config import BenchmarkSpec, SamplingSpec


@task(name="benchmark", log_prints=False, retries=1)
def benchmark_task(model_uri: str, spec: BenchmarkSpec, sampling: SamplingSpec, data_root: str | None,
                   artifacts: str, run_id: str, seed: int = 0) -> dict:
    """Evaluate one checkpoint folder on one benchmark; samples go to ``evals/<run_id>/samples/``."""
    from posttrain.engines import open_engine
    from posttrain.eval.run import run_benchmark
    from posttrain.storage import ArtifactStore, fetch

    store = ArtifactStore.from_uri(artifacts)
    engine = open_engine(sampling.engine, fetch(model_uri), batch_size=sampling.batch_size)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures = run_benchmark(engine, spec, sampling, data_root, Path(tmp), seed)
            for f in Path(tmp).rglob("*.jsonl"):
                store.put_file(f, f"evals/{run_id}/{f.relative_to(tmp).as_posix()}")
    finally:
        engine.close()
    return figures


@task(name="eval-report")
def report_task(table: dict, artifacts: str, run_id: str, mlflow_run_id: str | None) -> str:
    """Write the table (JSON and markdown) to the store, log ``eval/<benchmark>/<metric>``, attach a Prefect table."""
    from posttrain.eval.run import format_table
    from posttrain.storage import ArtifactStore
    from posttrain.tracking import Tracker

    store = ArtifactStore.from_uri(artifacts)
    store.put_json(f"evals/{run_id}/eval_table.json", table)
    if mlflow_run_id:
        tracker = Tracker(mlflow_run_id)
        for name, fig in table.items():
            tracker.log_metrics({f"eval/{name}/{k}": v for k, v in fig.items()})
    rows = [{"benchmark": n, **{k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()}} for n, f in table.items()]
    create_table_artifact(key="eval-table", table=rows, description="avg@k / pass@k / maj@k per benchmark")
    return format_table(table)
