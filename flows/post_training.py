"""The post-training DAG: prepare -> SFT x2 -> RL math -> code -> STEM -> distill -> instruct RL -> evaluate."""

from __future__ import annotations

from prefect import flow, get_run_logger

from posttrain.config import load_recipe
from posttrain.plan import make_plan
from tasks.stages import decontamination_task, for_stage, record_run, resolve_upstream


@flow(name="post-training", log_prints=True)
def post_training(recipe_path: str = "recipes/tiny-cpu.yaml", overrides: list[str] | None = None,
                  only: list[str] | None = None, force: list[str] | None = None, start_model: str | None = None,
                  artifacts: str | None = None) -> dict:
    """Run the stages of a recipe (all, or ``only`` those), reusing every stage already published.

    ``start_model`` (a checkpoint folder) replaces the model the first selected stage starts from.
    Returns ``{run, mlflow_run_id, stages: {stage: record}}``.
    """
    from posttrain.pipeline import TRAINING_STAGES
    from posttrain.plan import PIPELINE, import_model
    from posttrain.tracking import Tracker

    logger = get_run_logger()
    recipe = load_recipe(recipe_path, overrides)
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
            state = for_stage(stage, plan)(stage, plan, upstream, return_state=True)
            record = state.result()
            if state.name == "Cached":
                record = record.model_copy(update={"cached": True, "seconds": 0.0})
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
