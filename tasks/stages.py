"""One Prefect task per pipeline stage: cache keyed by the stage's content key, then one library call."""

from __future__ import annotations

import hashlib
import json
import time

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from posttrain.pipeline import StageRecord, cached_record, run_stage
from posttrain.plan import RunPlan
from tasks.results import result_storage


def stage_cache_key(context, parameters: dict) -> str | None:
    """Prefect cache key = the stage's content key and the store holding it. ``for_stage``
    refreshes the cache whenever the output is not published there (first run, deleted output,
    ``--force``), so a stale cache record is never returned and every run leaves one behind."""
    plan: RunPlan = parameters["plan"]
    stage: str = parameters["stage"]
    return f"{stage}-{plan.stage_keys[stage]}-{hashlib.sha256(plan.artifacts.encode()).hexdigest()[:8]}"


def _summary_markdown(record: StageRecord) -> str:
    from posttrain.tracking import run_url

    rows = "\n".join(f"| {k} | {v} |" for k, v in record.summary.items() if not isinstance(v, (dict, list)))
    mlflow = f"`{record.mlflow_run_id}`"
    if record.mlflow_run_id and (url := run_url(record.mlflow_run_id)):  # without the URI's credentials
        mlflow = f"[{record.mlflow_run_id}]({url})"
    return (f"### {record.stage}\n\n- output: `{record.uri}`\n- key: `{record.key}`\n"
            f"- MLflow run: {mlflow}\n- seconds: {record.seconds:.1f}\n\n| field | value |\n|---|---|\n{rows}\n")


# Summary fields that become Prefect table artifacts: (field, artifact key, description).
SUMMARY_TABLES = [
    ("probe_table", "{stage}-probe-matrix", "{stage}: checkpoint x subdomain pass@k, and the best per subdomain"),
    ("distill_table", "distill-selection", "distill: traces sampled, verified, and kept per domain and length bucket"),
    ("selection_table", "{stage}-hard-subset", "{stage}: traces kept and dropped per domain by the hard-subset selection"),
    ("rollouts", "{stage}-rollouts", "{stage}: sample rollouts of the held-out evaluations (prompt, completion, reward)"),
]


@task(name="stage", log_prints=False, persist_result=True, cache_key_fn=stage_cache_key, retries=0)
def stage_task(stage: str, plan: RunPlan, upstream: StageRecord | None) -> StageRecord:
    """Run one stage of ``plan`` (or reuse its published output) and attach its summary as an
    artifact; a progress artifact follows its training steps."""
    from posttrain.tracking import Tracker

    slug = stage.replace("_", "-")
    tracker = Tracker(plan.tracking_run_id) if plan.tracking_run_id else None
    progress_id = create_progress_artifact(progress=0.0, key=f"{slug}-progress",
                                           description=f"{stage}: training steps done (%)")

    def progress(fraction: float) -> None:
        update_progress_artifact(progress_id, progress=round(100 * fraction, 1))

    record = run_stage(stage, plan.recipe, plan.stage_keys[stage], upstream, plan.store(), tracker,
                       force=stage in plan.force, data_root=plan.data_root, input_keys=plan.stage_keys,
                       progress=progress)
    progress(1.0)
    create_markdown_artifact(key=f"{slug}-summary", markdown=_summary_markdown(record),
                             description=f"{stage} output and summary")
    table = record.summary.get("table")
    if table:
        from posttrain.eval.report import table_rows

        create_table_artifact(key="eval-table", table=table_rows(table),
                              description="avg@k / pass@k / maj@k per benchmark, beside VibeThinker-3B's pass@1")
    for field, key, description in SUMMARY_TABLES:
        if record.summary.get(field):
            create_table_artifact(key=key.format(stage=slug), table=record.summary[field],
                                  description=description.format(stage=stage))
    return record


@task(name="decontamination")
def decontamination_task(plan: RunPlan) -> dict:
    """Check the recipe's training sources against the benchmarks before any compute (design.md §1.6).

    Attaches a table of contaminated (training, benchmark) pairs and logs the counts to the run's
    MLflow parent. With ``action: fail`` a contaminated recipe fails here, naming the pairs.
    """
    from posttrain.eval.decontam import check_recipe
    from posttrain.tracking import Tracker

    report = check_recipe(plan.recipe, plan.data_root, plan.store())
    dropped = sum(len(ids) for ids in report["dropped"].values())
    rows = report["pairs"] or [{"training": "-", "benchmark": "-", "contaminated": 0, "examples": "none found"}]
    create_table_artifact(key="decontamination", table=rows,
                          description=f"training items overlapping benchmarks ({report['action']}: {dropped} dropped); "
                                      f"report {report['uri']}")
    if plan.tracking_run_id:
        Tracker(plan.tracking_run_id).log_metrics(
            {"decontamination/dropped": dropped, **{f"decontamination/{s}": len(ids) for s, ids in report["dropped"].items()}})
    return {k: report[k] for k in ("key", "uri", "action", "dropped")}


def for_stage(stage: str, plan: RunPlan):
    """``stage_task`` named after ``stage`` (so the Prefect UI shows stage names), its results and
    cache records in the run's artifact store; the cache is refreshed under --force and whenever
    the stage's output is not published."""
    published = plan.store().stage_manifest(stage, plan.stage_keys[stage]) is not None
    return stage_task.with_options(name=stage, task_run_name=stage, result_storage=result_storage(plan.artifacts),
                                   refresh_cache=stage in plan.force or not published)


def run_stage_here(stage: str, plan: RunPlan, upstream: StageRecord | None) -> StageRecord:
    """Run ``stage`` as a task of the current flow run; a cache hit comes back marked ``cached``."""
    state = for_stage(stage, plan)(stage, plan, upstream, return_state=True)
    record = state.result()
    if state.name == "Cached":
        record = record.model_copy(update={"cached": True, "seconds": 0.0})
    return record


def dispatch(stage: str, plan: RunPlan, upstream: StageRecord | None) -> StageRecord:
    """Run ``stage`` where the recipe places it: in this flow run, or, for a stage listed in
    ``placement``, as a flow run of deployment ``stage/<pool>`` on that work pool (a GPU pool's
    worker, say). Only references cross: the plan and the upstream record go as parameters, and
    the output's record is read back from the artifact store (design.md §2).

    Raises:
        RuntimeError: if the placed flow run does not complete, naming it and its state.
    """
    pool = plan.recipe.placement.get(stage)
    if pool is None:
        return run_stage_here(stage, plan, upstream)
    if stage not in plan.force and (hit := cached_record(plan.store(), stage, plan.stage_keys[stage])):
        return hit.model_copy(update={"seconds": 0.0})  # published already: no flow run to start
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    name = f"stage/{pool}"
    logger.info("%s: placed on work pool %s (deployment %s)", stage, pool, name)
    start = time.monotonic()
    # GPUs for the job: as many as the recipe launches training processes (the pools' `gpus` variable)
    processes = plan.recipe.launch.num_processes
    flow_run = run_deployment(name, parameters={"stage": stage, "plan": plan.model_dump(mode="json"),
                                                "upstream": upstream.model_dump(mode="json") if upstream else None},
                              flow_run_name=f"{stage}-{plan.run_id}", timeout=None, as_subflow=True,
                              job_variables={"gpus": processes} if processes > 1 else None)
    if flow_run.state is None or not flow_run.state.is_completed():
        raise RuntimeError(f"{stage}: flow run {flow_run.name} ({flow_run.id}) of deployment {name} ended "
                           f"{flow_run.state.name if flow_run.state else 'without a state'}")
    record = cached_record(plan.store(), stage, plan.stage_keys[stage])
    if record is None:
        raise RuntimeError(f"{stage}: flow run {flow_run.name} completed but published no output under key "
                           f"{plan.stage_keys[stage]} in {plan.artifacts}")
    manifest = plan.store().stage_manifest(stage, plan.stage_keys[stage])
    return record.model_copy(update={"cached": False, "seconds": manifest.get("seconds", time.monotonic() - start)})


@task(name="resolve-upstream")
def resolve_upstream(plan: RunPlan, stage: str) -> StageRecord | None:
    """The record the first stage of this run starts from: ``--model``, or the previous stage's published output.

    Raises:
        RuntimeError: if the previous stage has not been run with this recipe and code version.
    """
    from posttrain.plan import previous_stage

    if plan.start_model:
        return StageRecord.model_validate_json(plan.start_model)
    prev = previous_stage(stage)
    if prev is None:
        return None
    if stage == "evaluate":
        prev = "instruct_rl"
    record = cached_record(plan.store(), prev, plan.stage_keys[prev])
    if record is None:
        raise RuntimeError(f"{stage} starts from {prev}'s output ({plan.stage_keys[prev]}), which is not in "
                           f"{plan.artifacts}: run {prev} first, or pass --model")
    return record


@task(name="record-run")
def record_run(plan: RunPlan, records: list[StageRecord]) -> str:
    """Write ``runs/<run_id>.json`` naming the stage keys this run used; return its URI."""
    store = plan.store()
    rel = f"runs/{plan.run_id}.json"
    store.put_json(rel, {"run_id": plan.run_id, "recipe": plan.recipe_path, "code_version": plan.code_version,
                         "mlflow_run_id": plan.tracking_run_id,
                         "stages": [json.loads(r.model_dump_json()) for r in records]})
    return store.uri(rel)
