"""Prefect tasks of the evaluation flow: one task per benchmark, each writing to the artifact store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from posttrain.config import BenchmarkSpec, ClrSpec, SamplingSpec


@task(name="benchmark", log_prints=False, retries=1)
def benchmark_task(model_uri: str, spec: BenchmarkSpec, sampling: SamplingSpec, data_root: str | None,
                   artifacts: str, run_id: str, seed: int = 0, shard: tuple[int, int] = (0, 1)) -> dict:
    """Evaluate one checkpoint folder on shard ``i`` of ``n`` of one benchmark; samples go to
    ``evals/<run_id>/samples/``. Returns the raw part (``posttrain.eval.run.benchmark_part``); a
    failed shard is retried alone (``retries=1``)."""
    from posttrain.engines import open_engine
    from posttrain.eval.run import benchmark_part
    from posttrain.storage import ArtifactStore, fetch

    store = ArtifactStore.from_uri(artifacts)
    engine = open_engine(sampling.engine, fetch(model_uri), batch_size=sampling.batch_size)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            part = benchmark_part(engine, spec, sampling, data_root, Path(tmp), seed, shard)
            for f in Path(tmp).rglob("*.jsonl"):
                store.put_file(f, f"evals/{run_id}/{f.relative_to(tmp).as_posix()}")
    finally:
        engine.close()
    return part


@task(name="clr", log_prints=False, retries=1)
def clr_task(model_uri: str, spec: BenchmarkSpec, clr: ClrSpec, sampling: SamplingSpec, data_root: str | None,
             artifacts: str, run_id: str, seed: int = 0) -> dict:
    """CLR on one benchmark (``posttrain.eval.clr``); the full output (config, per-vote answers and
    reliabilities) goes to ``evals/<run_id>/clr/<benchmark>.json``. Returns the pass@1 figures."""
    from posttrain.data import load_source
    from posttrain.engines import SamplingParams, open_engine
    from posttrain.eval.clr import run_clr
    from posttrain.storage import ArtifactStore, fetch

    records = load_source(spec.name, data_root, limit=spec.limit, seed=seed)
    engine = open_engine(sampling.engine, fetch(model_uri), batch_size=sampling.batch_size)
    try:
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_new_tokens=sampling.max_new_tokens, seed=seed)
        out = run_clr(engine, records, clr, params, seed)
    finally:
        engine.close()
    ArtifactStore.from_uri(artifacts).put_json(f"evals/{run_id}/clr/{spec.name}.json", out)
    return {k: out[k] for k in ("problems", "pass_at_1", "clr_pass_at_1", "majority_pass_at_1",
                                "claims_per_trajectory", "verdict_rate")} | {"k": clr.k, "claims": clr.claims,
                                                                            "repeats": clr.repeats,
                                                                            "prompt_version": clr.prompt_version}


@task(name="eval-report")
def report_task(table: dict, artifacts: str, run_id: str, mlflow_run_id: str | None, clr: dict | None = None) -> str:
    """Write the table (JSON and markdown) to the store, log ``eval/<benchmark>/<metric>``, attach a
    Prefect table; CLR figures per benchmark (``clr``) go to ``eval/<benchmark>/clr/<figure>`` and a
    table of their own."""
    from posttrain.eval.report import length_histogram_png, pass_at_k_png, table_rows
    from posttrain.eval.run import format_table
    from posttrain.storage import ArtifactStore
    from posttrain.tracking import Tracker

    store = ArtifactStore.from_uri(artifacts)
    store.put_json(f"evals/{run_id}/eval_table.json", table)
    if mlflow_run_id:
        tracker = Tracker(mlflow_run_id)
        for name, fig in table.items():
            tracker.log_metrics({f"eval/{name}/{k}": v for k, v in fig.items()})
    create_table_artifact(key="eval-table", table=table_rows(table),
                          description="avg@k / pass@k / maj@k per benchmark, beside VibeThinker-3B's pass@1")
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples"
        for rel in store.list(f"evals/{run_id}/samples/"):
            samples.mkdir(parents=True, exist_ok=True)
            store.get_file(rel, samples / rel.rsplit("/", 1)[-1])
        for png in (pass_at_k_png(table, Path(tmp) / "pass_at_k.png"),
                    length_histogram_png(samples, Path(tmp) / "lengths.png")):
            store.put_file(png, f"evals/{run_id}/{png.name}")
            if mlflow_run_id:
                tracker.log_artifact(png)
    if clr:
        store.put_json(f"evals/{run_id}/clr_table.json", clr)
        if mlflow_run_id:
            for name, fig in clr.items():
                tracker.log_metrics({f"eval/{name}/clr/{k}": v for k, v in fig.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
        create_table_artifact(key="clr-table", table=[{"benchmark": n, **f} for n, f in clr.items()],
                              description="CLR: mean pass@1 of single trajectories, majority vote and CLR vote")
    markdown = format_table(table)
    create_markdown_artifact(key="eval-summary", markdown=f"### Evaluation {run_id}\n\n{markdown}",
                             description="the evaluation table as markdown")
    return markdown
