"""A pipeline run's plan: the recipe, where things go, and every stage's content key, computed up front."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from posttrain.config import Recipe
from posttrain.pipeline import STAGES, StageRecord, code_version, stage_key
from posttrain.storage import ArtifactStore, default_root

# The stage order of the post-training DAG: flows/post_training.py walks it.
PIPELINE = ["prepare_model", "sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill",
            "instruct_rl", "evaluate"]


class RunPlan(BaseModel):
    """Everything a stage task needs to find its inputs and publish its output (small, serialisable)."""

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    recipe: Recipe
    recipe_path: str
    artifacts: str
    data_root: str | None
    code_version: str
    stage_keys: dict[str, str] = Field(description="content key of every pipeline stage")
    stages: list[str] = Field(description="the stages this run executes, in pipeline order")
    force: list[str] = []
    start_model: str | None = None
    tracking_run_id: str | None = None

    def store(self) -> ArtifactStore:
        return ArtifactStore.from_uri(self.artifacts)


def make_plan(recipe: Recipe, recipe_path: str, stages: list[str], artifacts: str | None = None,
              force: list[str] | None = None, start_model: StageRecord | None = None) -> RunPlan:
    """Compute the content key of each stage in ``stages`` (in pipeline order).

    ``start_model`` replaces the output of the stage before the first one (``--from STAGE --model URI``).

    Raises:
        ValueError: for an unknown stage name.
    """
    from posttrain.data import resolve_data_root

    unknown = [s for s in stages + (force or []) if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown or no stage(s) {unknown}; stages are {PIPELINE}")
    stages = [s for s in PIPELINE if s in stages]
    version = code_version()
    data = _data_hashes(recipe)
    keys: dict[str, str] = {}
    upstream = None
    for stage in PIPELINE:
        if start_model is not None and stage == stages[0]:
            upstream = start_model.key
        keys[stage] = stage_key(stage, recipe, upstream, version, data.get(stage))
        if stage != "evaluate":
            upstream = keys[stage]
    return RunPlan(recipe=recipe, recipe_path=str(recipe_path), artifacts=artifacts or default_root(),
                   data_root=resolve_data_root(recipe.data_root), code_version=version, stage_keys=keys,
                   stages=stages, force=force or [], start_model=start_model.model_dump_json() if start_model else None)


def _data_hashes(recipe: Recipe) -> dict[str, str]:
    """Content hashes of each stage's data sources; none for a hub dataset named by id (its
    stages are then keyed by the source names only)."""
    import logging

    from posttrain.snapshot import stage_data_hashes

    try:
        return stage_data_hashes(recipe)
    except ValueError as e:
        logging.getLogger(__name__).warning("stage keys without data content hashes: %s", e)
        return {}


def previous_stage(stage: str) -> str | None:
    """The stage whose model ``stage`` starts from (evaluate reads instruct_rl's)."""
    i = PIPELINE.index(stage)
    return PIPELINE[i - 1] if i > 0 else None


def import_model(uri: str, store: ArtifactStore) -> StageRecord:
    """Publish an existing checkpoint folder (a local path) as a stage output named ``imported``, so
    ``--from STAGE --model URI`` can start the pipeline from it.

    The folder is checked first (``posttrain.modeling.check_checkpoint``: config, every shard,
    every safetensors header against its file's size), so a missing, corrupt or truncated
    checkpoint is refused before anything is written to the store.

    Raises:
        ValueError: for an ``s3://`` URI.
        CheckpointError: (a ``ValueError``) naming the folder or the file at fault, with ``--model``.
    """
    import hashlib
    import shutil
    import tempfile

    from posttrain.modeling import CheckpointError, check_checkpoint
    from posttrain.storage import sha256_file

    src = Path(uri).expanduser()
    if uri.startswith("s3://"):
        raise ValueError("--model takes a local checkpoint folder; for an s3:// stage output use --from with its stage")
    try:
        check_checkpoint(src)
    except CheckpointError as e:
        raise CheckpointError(e.path, f"{e.problem} (--model {uri})") from None
    digest = hashlib.sha256()
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(f.relative_to(src).as_posix().encode() + sha256_file(f).encode())
    key = digest.hexdigest()[:32]
    if store.stage_manifest("imported", key) is None:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(src, Path(tmp) / "model")
            store.publish_stage("imported", key, Path(tmp), extra={"summary": {"source": uri}})
    m = store.stage_manifest("imported", key)
    return StageRecord(stage="imported", key=key, uri=store.uri(store.stage_prefix("imported", key)),
                       config_hash="", content_hash=m["content_hash"], cached=True, summary=m.get("summary", {}))
