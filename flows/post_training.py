"""The post-training DAG: prepare -> SFT x2 -> RL math -> code -> STEM -> distill -> instruct RL -> evaluate."""

from __future__ import annotations

from prefect import flow, get_run_logger

from posttrain.config import Recipe, resolve_recipe
from posttrain.plan import make_plan
from tasks.stages import decontamination_task, dispatch, record_run, resolve_upstream


@flow(name="post-training", log_prints=True)
def post_training(recipe_path: str = "recipes/tiny-cpu.yaml", recipe: Recipe | None = None,
                  overrides: list[str] | None = None, only: list[str] | None = None, force: list[str] | None = None,
                  start_model: str | None = None, artifacts: str | None = None) -> dict:
    """Run the stages of a recipe (all, or ``only`` those), reusing every stage already published.

    ``recipe`` (the recipe itself, validated field by field: the Prefect UI shows it as a form)
    replaces the file at ``recipe_path``; ``overrides`` (``key.path=value``) apply to either.
    ``start_model`` (a checkpoint folder) replaces the model the first selected stage starts from.
    A stage listed in the recipe's ``placement`` runs as a flow run on that work pool.
    Returns ``{run, mlflow_run_id, stages: {stage: record}}``.

    Raises:
        posttrain.tracking.TrackingUnavailable: before any stage, if the MLflow server does not answer.
    """
    from posttrain.pipeline import TRAINING_STAGES
    from posttrain.plan import PIPELINE, import_model
    from posttrain.tracking import Tracker, check_tracking_server

    check_tracking_server()  # fail in seconds, before any compute, rather than after MLflow's minutes of retries
    logger = get_run_logger()
    recipe, recipe_path = resolve_recipe(recipe_path, recipe, overrides)
    stages = only or PIPELINE
    start = None
    if start_model:
        from posttrain.storage import ArtifactStore

        start = import_model(start_model, ArtifactStore.from_uri(artifacts))
    plan = make_plan(recipe, recipe_path, stages, artifacts, force, start)
    tracker = Tracker.start_pipeline(recipe.experiment, f"{recipe.name}-{plan.run_id}",
                                     {"recipe": recipe_path, "code_version": plan.code_version, "run_id": plan.run_id})
    plan.tracking_run_id = tracker.run_id
    logger.info("run %s: stages %s, artifacts %s", plan.run_id, plan.stages, plan.artifacts)
    records = []
    upstream = resolve_upstream(plan, plan.stages[0])
    try:
        if recipe.decontamination.action != "skip" and any(s in TRAINING_STAGES for s in plan.stages):
            decontamination_task(plan)
        for stage in plan.stages:
            record = dispatch(stage, plan, upstream)
            logger.info("%s: %s (%s)", stage, "cached" if record.cached else f"{record.seconds:.0f} s", record.uri)
            records.append(record)
            if stage != "evaluate":
                upstream = record
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.log_metrics({"pipeline/stages": len(records), "pipeline/cached": sum(r.cached for r in records)})
    tracker.end("FINISHED")
    run_uri = record_run(plan, records)
    return {"run": run_uri, "mlflow_run_id": tracker.run_id, "artifacts": plan.artifacts,
            "stages": {r.stage: r.model_dump(mode="json") for r in records}}


if __name__ == "__main__":
    post_training()
