"""Nightly retraining end to end on the smoke recipe, in-process, against a real MLflow server:
first champion, no new data, new data -> train from the champion -> gate -> retention dry run."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.integration
def test_nightly_first_champion_then_no_new_data_then_gated_candidate(tmp_path, monkeypatch, prefect_harness,
                                                                     mlflow_server):
    from flows.nightly import nightly
    from posttrain import registry
    from posttrain.storage import ArtifactStore

    data = tmp_path / "data"
    shutil.copytree(DATA, data, symlinks=False)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("POSTTRAIN_DATA", str(data))
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    artifacts = str(tmp_path / "artifacts")
    model = f"smoke-{uuid.uuid4().hex[:6]}"
    overrides = [f"nightly.promotion.registered_model={model}", "nightly.promotion.bootstrap_samples=2000",
                 "nightly.retention.keep_candidates=0", "nightly.retention.min_age_hours=0"]
    args = dict(recipe_path="recipes/smoke.yaml", overrides=overrides, artifacts=artifacts)

    first = nightly(**args)
    assert first["status"] == "promoted" and first["candidate_version"] == "1"
    assert "first champion" in first["decision"]
    assert registry.champion(model).version == "1"

    again = nightly(**args)
    assert again == {"status": "no-new-data", "snapshot": first["snapshot"]}

    # one new training record in a source the recipe reads: new snapshot, new stage keys
    gsm8k = data / "train" / "gsm8k_train.jsonl"
    row = json.loads(gsm8k.read_text().splitlines()[0])
    row["question"] = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    row["answer"] = "3 + 4 = 7\n#### 7"
    with gsm8k.open("a") as f:
        f.write(json.dumps(row) + "\n")
    third = nightly(**args)
    assert third["snapshot"] != first["snapshot"] and third["candidate_version"] == "2"
    assert third["status"] in {"promoted", "kept"}
    assert registry.champion(model).version == ("2" if third["promoted"] else "1")
    info = registry.version_info(registry.candidates(model)[0])
    assert "prepare_model" not in info["stage_keys"]  # trained from the champion, not from scratch
    # retention ran as a dry run: it listed the outputs of the run not kept, and deleted nothing
    cleanup = third["cleanup"]
    assert cleanup["dry_run"] and cleanup["deleted"] and cleanup["bytes"] > 0
    store = ArtifactStore.from_uri(artifacts)
    for prefix in cleanup["deleted"]:
        assert store.list(prefix), f"{prefix} was deleted in a dry run"
