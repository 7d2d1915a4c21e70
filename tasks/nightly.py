"""Prefect tasks of the nightly retraining flow: thin wrappers over posttrain.snapshot, .registry,
.promotion and .retention, each leaving its figures as an artifact."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from posttrain.config import Recipe
from posttrain.storage import ArtifactStore, default_root


def _store(artifacts: str | None) -> ArtifactStore:
    return ArtifactStore.from_uri(artifacts or default_root())


def _snapshot_path(recipe: Recipe) -> str:
    return f"nightly/{recipe.name}/snapshot.json"


@task(name="data-snapshot")
def snapshot_task(recipe: Recipe, artifacts: str | None) -> dict:
    """Content hash of the recipe's training data, compared with the last completed nightly run's.

    Returns ``{hash, sources, changed, previous, previous_at}``.
    """
    from posttrain.data import resolve_data_root
    from posttrain.snapshot import data_snapshot

    store = _store(artifacts)
    snap = data_snapshot(recipe, resolve_data_root(recipe.data_root))
    rel = _snapshot_path(recipe)
    previous = store.get_json(rel) if store.exists(rel) else None
    changed = previous is None or previous["hash"] != snap["hash"]
    rows = "\n".join(f"| {name} | `{digest[:12]}` |" for name, digest in sorted(snap["sources"].items()))
    create_markdown_artifact(key="data-snapshot", description="content hash of the recipe's training sources", markdown=(
        f"### Data snapshot `{snap['hash'][:12]}`\n\n"
        f"- previous nightly run: `{previous['hash'][:12] if previous else 'none'}` "
        f"({previous['at'] if previous else '-'})\n- new data: **{'yes' if changed else 'no'}**\n\n"
        f"| source | sha256 |\n|---|---|\n{rows}\n"))
    return {"hash": snap["hash"], "sources": snap["sources"], "changed": changed,
            "previous": previous["hash"] if previous else None, "previous_at": previous["at"] if previous else None}


@task(name="save-snapshot")
def save_snapshot_task(recipe: Recipe, artifacts: str | None, snapshot: dict) -> str:
    """Record the snapshot this nightly run trained on (written last: a failed run retrains next night)."""
    store = _store(artifacts)
    store.put_json(_snapshot_path(recipe), {"hash": snapshot["hash"], "sources": snapshot["sources"],
                                            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return store.uri(_snapshot_path(recipe))


@task(name="champion")
def champion_task(recipe: Recipe, artifacts: str | None) -> dict | None:
    """The registry's ``champion``: its version, its pipeline run, and its model fetched to a
    local folder (the nightly run starts from it); None when no model is champion yet."""
    from posttrain import registry

    version = registry.champion(recipe.nightly.promotion.registered_model)
    if version is None:
        get_run_logger().info("no champion in the registry yet: training the whole pipeline")
        return None
    info = registry.version_info(version)
    store = ArtifactStore.from_uri(info["artifacts"])
    model = store.fetch_stage("instruct_rl", info["stage_keys"]["instruct_rl"]) / "model"
    get_run_logger().info("champion: version %s (run %s), model %s", version.version, info["run_id"], model)
    return {"version": version.version, "run_id": info["run_id"], "artifacts": info["artifacts"],
            "evaluate_key": info["stage_keys"]["evaluate"], "model": str(model)}


@task(name="register-candidate")
def register_task(recipe: Recipe, result: dict, snapshot: str) -> dict:
    """Register the run's final model as a new version with alias ``candidate``; its evaluation
    table and run record go with it. Returns ``{version, run_id}``."""
    from posttrain import registry

    stages = result["stages"]
    version = registry.register_candidate(
        recipe.nightly.promotion.registered_model, source_uri=stages["instruct_rl"]["uri"],
        mlflow_run_id=result["mlflow_run_id"], eval_table=stages["evaluate"]["summary"].get("table", {}),
        run_record_uri=result["run"], artifacts=result["artifacts"],
        stage_keys={s: r["key"] for s, r in stages.items()}, tags={"data_snapshot": snapshot})
    return {"version": version.version, "run_id": Path(result["run"]).stem}


@task(name="promotion-gate")
def gate_task(recipe: Recipe, result: dict, champion: dict | None, candidate: dict) -> dict:
    """Paired bootstrap of the candidate against the champion over the gate benchmarks' problems;
    moves the ``champion`` alias when the candidate is better. Returns the decision as a dict."""
    from posttrain import registry
    from posttrain.promotion import decide, decision_markdown, problem_scores

    spec = recipe.nightly.promotion
    store = ArtifactStore.from_uri(result["artifacts"])
    cand = problem_scores(store.fetch_stage("evaluate", result["stages"]["evaluate"]["key"]))
    champ = None
    if champion is not None:
        champ = problem_scores(ArtifactStore.from_uri(champion["artifacts"]).fetch_stage("evaluate",
                                                                                         champion["evaluate_key"]))
    decision = decide(cand, champ, spec)
    if decision.promote:
        registry.promote(spec.registered_model, candidate["version"])
    create_markdown_artifact(key="promotion-decision", markdown=decision_markdown(decision),
                             description=f"candidate v{candidate['version']} vs champion "
                                         f"{'v' + str(champion['version']) if champion else '(none)'}")
    get_run_logger().info("promotion gate: %s", decision.reason)
    return {"promote": decision.promote, "reason": decision.reason}


@task(name="retention-cleanup")
def cleanup_task(recipe: Recipe, artifacts: str) -> dict:
    """Keep the champion's and the last N candidates' stage outputs; delete (or, in a dry run,
    list) the rest. Returns the report: prefixes, bytes, and whether anything was deleted."""
    from posttrain import registry
    from posttrain.retention import apply, cleanup_markdown, plan_cleanup, runs_to_keep

    spec = recipe.nightly.retention
    name = recipe.nightly.promotion.registered_model
    champion = registry.champion(name)
    keep = runs_to_keep(registry.version_info(champion)["run_id"] if champion else None,
                        [registry.version_info(v)["run_id"] for v in registry.candidates(name)], spec.keep_candidates)
    store = ArtifactStore.from_uri(artifacts)
    plan = plan_cleanup(store, keep, min_age_s=spec.min_age_hours * 3600)
    report = apply(plan, store, dry_run=spec.dry_run)
    create_markdown_artifact(key="retention-cleanup", markdown=cleanup_markdown(plan, dry_run=spec.dry_run),
                             description=("what a cleanup would delete (dry run)" if spec.dry_run else
                                          "what the cleanup deleted"))
    return report
