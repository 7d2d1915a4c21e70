"""The MLflow model registry of nightly retraining: candidates, the champion, promotion.

Every nightly run registers its final model as a new version of one registered model
(``PromotionSpec.registered_model``) with the alias ``candidate``; the gate
(``posttrain.promotion``) decides whether the alias ``champion`` moves to it. The tracking
URI comes from the environment (``posttrain.tracking.tracking_uri``).

A version's ``source``: the stage output's URI when it is ``s3://`` (an MLflow server accepts
it as it is); otherwise ``runs:/<run_id>/candidate``, the run artifacts this module logs (the run
record and the evaluation table), because a server refuses a local path outside the run's own
artifact folder. The stage output's URI is always the tag ``posttrain.source_uri``; the pipeline
run id, artifact root, stage keys and evaluation table are tags too (:func:`version_info`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CANDIDATE = "candidate"
ARTIFACT_DIR = "candidate"
TAG_SOURCE = "posttrain.source_uri"
TAG_RUN_RECORD = "posttrain.run_record"
TAG_RUN_ID = "posttrain.run_id"
TAG_EVAL = "posttrain.eval_table"
TAG_EVALUATE_URI = "posttrain.evaluate_uri"
TAG_PREVIOUS = "posttrain.previous_champion"
TAG_STAGE_KEYS = "posttrain.stage_keys"
TAG_ARTIFACTS = "posttrain.artifacts"
_MAX_TAG = 100_000  # MLflow's limit on a model-version tag value


class RegistryError(RuntimeError):
    """A registry operation was refused; the message names the model and version."""


def _client():
    from mlflow import MlflowClient

    from posttrain.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def _missing(e: Exception) -> bool:
    return getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def champion(name: str) -> "ModelVersion | None":
    """The version of registered model ``name`` that holds the alias ``champion``; None if the
    model or the alias does not exist."""
    return versions_by_alias(name).get(CHAMPION)


def _eval_tag(eval_table: dict) -> str:
    """The evaluation table as a tag value: whole, or only each benchmark's headline figures when
    the whole table is longer than MLflow allows."""
    text = json.dumps(eval_table, sort_keys=True, default=str)
    if len(text) <= _MAX_TAG:
        return text
    short = {b: {k: v for k, v in f.items() if k in ("k", "problems") or k.startswith(("avg_at_", "pass_at_"))}
             for b, f in eval_table.items()}
    return json.dumps(short, sort_keys=True)


def _artifact_root(run_record_uri: str, run_id: str) -> str:
    """The artifact root of a run record's URI (``<root>/runs/<run_id>.json``)."""
    return run_record_uri.removesuffix(f"/runs/{run_id}.json")


def _version_tags(source_uri: str, eval_table: dict, run_record_uri: str, record: dict, artifacts: str | None,
                  stage_keys: dict[str, str] | None) -> dict[str, str]:
    run_id = str(record.get("run_id", ""))
    stages = record.get("stages", [])
    keys = stage_keys if stage_keys is not None else {s["stage"]: s["key"] for s in stages}
    tags = {TAG_SOURCE: source_uri, TAG_RUN_RECORD: run_record_uri, TAG_RUN_ID: run_id,
            TAG_EVAL: _eval_tag(eval_table), TAG_STAGE_KEYS: json.dumps(keys, sort_keys=True),
            TAG_ARTIFACTS: artifacts or _artifact_root(run_record_uri, run_id)}
    evaluate = [s for s in stages if s.get("stage") == "evaluate"]
    if evaluate:
        tags[TAG_EVALUATE_URI] = evaluate[-1]["uri"]
    return tags


def register_candidate(name: str, source_uri: str, mlflow_run_id: str, eval_table: dict, run_record_uri: str,
                       *, artifacts: str | None = None, stage_keys: dict[str, str] | None = None,
                       tags: dict[str, str] | None = None) -> "ModelVersion":
    """Register a pipeline run's model as a new version of ``name`` (created if missing) and point
    the alias ``candidate`` at it.

    ``source_uri``: the final stage output (``stages/<stage>/<key>``); ``mlflow_run_id``: the
    MLflow id of the pipeline's parent run; ``eval_table``: ``{benchmark: figures}`` of the
    evaluate stage; ``run_record_uri``: the run's ``<artifacts>/runs/<run_id>.json``;
    ``artifacts`` (default: read off ``run_record_uri``) and ``stage_keys`` (default: the
    record's) are stored for :func:`version_info`; ``tags`` are extra version tags.

    The run record and the table are logged as artifacts ``candidate/run_record.json`` and
    ``candidate/eval_table.json`` of the MLflow run; the version gets the tags
    ``posttrain.source_uri``, ``.run_record``, ``.run_id`` (the pipeline run id), ``.eval_table``,
    ``.stage_keys``, ``.artifacts`` and, when the record has an evaluate stage, ``.evaluate_uri``.
    Returns the version (tags and aliases filled).

    Raises:
        RegistryError: if ``eval_table`` is empty or the MLflow run does not exist.
        posttrain.storage.StorageError: if the run record cannot be read.
    """
    from mlflow.exceptions import MlflowException

    from posttrain.storage import fetch

    if not eval_table:
        raise RegistryError(f"{name}: a candidate needs its evaluation table; got an empty one")
    client = _client()
    try:
        client.get_run(mlflow_run_id)
    except MlflowException as e:
        raise RegistryError(f"{name}: MLflow run {mlflow_run_id} not found at {client.tracking_uri}: {e}") from e
    record = json.loads(Path(fetch(run_record_uri)).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run_record.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (Path(tmp) / "eval_table.json").write_text(json.dumps(eval_table, indent=2, sort_keys=True, default=str))
        client.log_artifacts(mlflow_run_id, tmp, ARTIFACT_DIR)
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not _missing(e):
            raise
        client.create_registered_model(name, description="posttrain: nightly candidates and the champion")
    all_tags = {**(tags or {}), **_version_tags(source_uri, eval_table, run_record_uri, record, artifacts, stage_keys)}
    source = source_uri if source_uri.startswith("s3://") else f"runs:/{mlflow_run_id}/{ARTIFACT_DIR}"
    version = client.create_model_version(name, source, run_id=mlflow_run_id, tags=all_tags,
                                          description=f"pipeline run {record.get('run_id', '?')}: {source_uri}")
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    return client.get_model_version(name, version.version)


def version_info(version: "ModelVersion") -> dict:
    """What the nightly flow needs of a registered version, from its tags: ``{version, run_id``
    (pipeline run), ``mlflow_run_id, artifacts`` (artifact root), ``stage_keys {stage: key},
    source_uri, evaluate_uri, run_record, eval_table}``; missing tags give None ({} for the dicts).
    """
    tags = version.tags
    return {"version": version.version, "run_id": tags.get(TAG_RUN_ID) or None, "mlflow_run_id": version.run_id,
            "artifacts": tags.get(TAG_ARTIFACTS), "stage_keys": json.loads(tags.get(TAG_STAGE_KEYS) or "{}"),
            "source_uri": tags.get(TAG_SOURCE), "evaluate_uri": tags.get(TAG_EVALUATE_URI),
            "run_record": tags.get(TAG_RUN_RECORD), "eval_table": json.loads(tags.get(TAG_EVAL) or "{}")}


def promote(name: str, version: str | int) -> "ModelVersion | None":
    """Move the alias ``champion`` of ``name`` to ``version``; return the previous champion (None
    if there was none).

    The alias moves last, in one registry call, and only after the checks: the version exists,
    is ``READY`` and carries its evaluation (``posttrain.eval_table``); a failed check leaves the
    alias where it was. The new champion is tagged ``posttrain.previous_champion``.

    Raises:
        RegistryError: naming the model and version when a check fails.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        target = client.get_model_version(name, str(version))
    except MlflowException as e:
        raise RegistryError(f"{name} version {version} cannot be read ({e.error_code}): not promoted") from e
    if target.status != "READY":
        raise RegistryError(f"{name} version {version} is {target.status}, not READY: not promoted")
    if not target.tags.get(TAG_EVAL):
        raise RegistryError(f"{name} version {version} has no stored evaluation ({TAG_EVAL}): not promoted")
    previous = champion(name)
    if previous is not None and previous.version == target.version:
        return previous
    client.set_model_version_tag(name, target.version, TAG_PREVIOUS, previous.version if previous else "")
    client.set_registered_model_alias(name, CHAMPION, target.version)
    return previous


def versions_by_alias(name: str) -> "dict[str, ModelVersion]":
    """``{alias: version}`` of registered model ``name``; {} if the model does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if _missing(e):
            return {}
        raise
    return {alias: client.get_model_version(name, v) for alias, v in model.aliases.items()}


def candidates(name: str) -> "list[ModelVersion]":
    """Every version of registered model ``name``, newest (highest version number) first; [] if
    the model does not exist."""
    client = _client()
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def pipeline_run_id(version: "ModelVersion | None") -> str | None:
    """The pipeline run id (``runs/<id>.json``) a version was registered from; None for None or
    a version registered by other means."""
    if version is None:
        return None
    return version.tags.get(TAG_RUN_ID) or None
