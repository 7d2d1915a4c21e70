"""Nightly retraining (deployment ``post-training/nightly``): snapshot -> train from the champion ->
register the candidate -> promotion gate -> retention cleanup."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows import post_training as pipeline
from posttrain.config import Recipe, resolve_recipe
from tasks.nightly import champion_task, cleanup_task, gate_task, register_task, save_snapshot_task, snapshot_task


# Named like the flow: `prefect deploy --name post-training/nightly` matches deployments by the
# entrypoint's function name.
@flow(name="post-training", flow_run_name="nightly-{recipe_path}", log_prints=True)
def post_training(recipe_path: str = "recipes/tiny-cpu.yaml", recipe: Recipe | None = None,
                  overrides: list[str] | None = None, artifacts: str | None = None) -> dict:
    """Retrain on new data and promote the result only if it beats the champion.

    1. The data snapshot (content hash of the recipe's training sources) equals the last nightly
       run's: end early, ``status: no-new-data``.
    2. Train every stage after ``prepare_model`` from the MLflow ``champion`` (the whole pipeline
       when there is none yet), evaluate, and register the result as ``candidate``.
    3. Paired bootstrap over the gate benchmarks' problems (``recipe.nightly.promotion``): the
       ``champion`` alias moves to the candidate only if it is better.
    4. Retention: keep the champion and the last N candidates' outputs; report (or delete) the rest.

    Returns ``{status, snapshot, candidate_version, promoted, decision, cleanup}``.
    """
    from posttrain.plan import PIPELINE

    logger = get_run_logger()
    recipe, recipe_label = resolve_recipe(recipe_path, recipe, overrides)
    snapshot = snapshot_task(recipe, artifacts)
    if not snapshot["changed"]:
        logger.info("no new data: snapshot %s equals the last nightly run's (%s); nothing to train",
                    snapshot["hash"][:12], snapshot["previous_at"])
        return {"status": "no-new-data", "snapshot": snapshot["hash"]}
    champion = champion_task(recipe, artifacts)
    stages = PIPELINE[1:] if champion else PIPELINE
    result = pipeline.post_training(recipe_path=recipe_label, recipe=recipe, only=stages,
                                    start_model=champion["model"] if champion else None, artifacts=artifacts)
    candidate = register_task(recipe, result, snapshot["hash"])
    decision = gate_task(recipe, result, champion, candidate)
    cleanup = cleanup_task(recipe, result["artifacts"])
    save_snapshot_task(recipe, artifacts, snapshot)
    return {"status": "promoted" if decision["promote"] else "kept", "snapshot": snapshot["hash"],
            "candidate_version": candidate["version"], "promoted": decision["promote"],
            "decision": decision["reason"], "cleanup": cleanup}


nightly = post_training
