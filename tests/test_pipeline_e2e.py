"""The whole DAG on the smoke recipe, against a real S3-compatible server and MLflow's sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.plan import PIPELINE

REPO = Path(__file__).resolve().parents[1]
TRAINING = {"sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill", "instruct_rl"}
RL = {"rl_math", "rl_code", "rl_stem", "instruct_rl"}


@pytest.mark.slow
@pytest.mark.integration
def test_whole_dag_then_every_stage_cached(s3_env, tmp_path, monkeypatch, prefect_harness):
    import boto3
    from mlflow.tracking import MlflowClient

    from flows.post_training import post_training
    from posttrain.checkpoints import param_delta
    from posttrain.storage import ArtifactStore

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    artifacts = f"{s3_env}/pipeline"

    first = post_training("recipes/smoke.yaml", artifacts=artifacts)
    stages = first["stages"]
    assert list(stages) == PIPELINE
    assert not any(r["cached"] for r in stages.values())

    # every stage's manifest is in the bucket
    bucket = s3_env.removeprefix("s3://")
    s3 = boto3.client("s3")
    for name, record in stages.items():
        s3.head_object(Bucket=bucket, Key=f"pipeline/stages/{name}/{record['key']}/manifest.json")
    # Prefect's task results and cache records live in the same bucket, for workers elsewhere
    results = s3.list_objects_v2(Bucket=bucket, Prefix="pipeline/prefect-results/").get("KeyCount", 0)
    assert results >= len(PIPELINE)

    # MLflow: the parent run and one child per stage, each with metrics
    client = MlflowClient(uri)
    parent = client.get_run(first["mlflow_run_id"])
    # decontamination ran first against every benchmark and dropped the overlapping training items
    assert parent.data.metrics["decontamination/dropped"] > 0 and "decontamination/math_train" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["stage"] for c in children) == sorted(PIPELINE)
    for child in children:
        assert child.data.metrics, child.data.tags["stage"]
        assert child.info.status == "FINISHED"
    by_stage = {c.data.tags["stage"]: c for c in children}
    # sft_stage1 probed its checkpoints per synthetic task and fused the best ones
    probe = stages["sft_stage1"]["summary"]
    assert probe["probe_checkpoints"] == 3 and probe["probe_subdomains"] == 2 and probe["fusion_experts"] >= 1
    assert any(k.startswith("train/sft_stage1/probe/") for k in by_stage["sft_stage1"].data.metrics)
    # the SFT stages published their datasets with manifests, the teacher and hard-subset reports
    for name, extra in (("sft_stage1", "sft_data_report.json"), ("sft_stage2", "hard_subset_report.json")):
        folder = f"pipeline/stages/{name}/{stages[name]['key']}"
        for rel in ("sft_data/traces.jsonl", "sft_data/manifest.json", extra):
            s3.head_object(Bucket=bucket, Key=f"{folder}/{rel}")
        artifacts_logged = {a.path for a in client.list_artifacts(by_stage[name].info.run_id)}
        assert extra in artifacts_logged and "sft_data" in artifacts_logged, artifacts_logged
    assert stages["sft_stage1"]["summary"]["teacher_samples"] > 0
    assert stages["sft_stage2"]["summary"]["hard_kept"] + stages["sft_stage2"]["summary"]["hard_dropped"] > 0
    rl_math = by_stage["rl_math"].data.metrics
    for key in ("train/rl_math/mgpo/weight_mean", "train/rl_math/pass_rate/zero", "train/rl_math/heldout/avg_at_2",
                "train/rl_math/reward/synthetic_digits/mean", "train/rl_math/rollout/tokens_per_second", "filter/kept"):
        assert key in rl_math, (key, sorted(rl_math))
    # rl_math ran its accuracy and efficiency phases, logged sample rollouts, and its mirrored
    # checkpoints were removed once the output was published
    assert stages["rl_math"]["summary"]["phases"] == "accuracy,efficiency"
    assert stages["rl_math"]["summary"]["rollouts"]
    prefix = f"pipeline/stages/rl_math/{stages['rl_math']['key']}/checkpoints/"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 0
    assert any(k.startswith("eval/synthetic_digits/avg_at_") for k in by_stage["evaluate"].data.metrics)

    # every SFT and RL stage changed the parameters (measured on the published checkpoints)
    store = ArtifactStore.from_uri(artifacts)
    order = [s for s in PIPELINE if s != "evaluate"]
    for prev, stage in zip(order, order[1:]):
        before = store.fetch_stage(prev, stages[prev]["key"]) / "model"
        after = store.fetch_stage(stage, stages[stage]["key"]) / "model"
        assert param_delta(before, after)["l2"] > 0, f"{stage} did not change the model"
    # ...and in every RL stage the prompt filter kept prompts and some group's rewards varied
    for stage in RL:
        summary = stages[stage]["summary"]
        assert summary["kept"] > 0 and summary["kept"] + summary["dropped_unsolved"] <= summary["prompts"], stage
        assert summary["frac_reward_zero_std_min"] < 1, stage

    # the eval table is in the store
    table = store.get_json(f"stages/evaluate/{stages['evaluate']['key']}/eval_table.json")
    assert set(table) == {"synthetic_digits", "aime2025", "math500", "humaneval", "ifeval", "ifeval (distill)"}
    # IFEval before instruct RL (on distill's model) sits beside the final model's, in MLflow too
    assert set(table["ifeval (distill)"]) == set(table["ifeval"])
    assert "eval/distill/ifeval/avg_at_2" in by_stage["evaluate"].data.metrics
    # distillation sampled its specialists and reported its selection; instruct prompts were checked
    distill = stages["distill"]["summary"]
    assert distill["verified"] > 0 and 0 < distill["kept"] <= distill["verified"] and distill["distill_table"]
    assert "distill_report.json" in {a.path for a in client.list_artifacts(by_stage["distill"].info.run_id)}
    assert stages["instruct_rl"]["summary"]["decontamination_checked"] == 4

    second = post_training("recipes/smoke.yaml", artifacts=artifacts)
    assert all(r["cached"] for r in second["stages"].values()), {k: r["cached"] for k, r in second["stages"].items()}
    assert {k: r["key"] for k, r in second["stages"].items()} == {k: r["key"] for k, r in stages.items()}


@pytest.mark.slow
@pytest.mark.integration
def test_only_from_model_and_force(tiny_model, tmp_path, monkeypatch, prefect_harness):
    """``--only``/``--model`` start one stage from an existing checkpoint; ``--force`` recomputes it."""
    from flows.post_training import post_training

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    artifacts = str(tmp_path / "artifacts")
    args = dict(recipe_path="recipes/smoke.yaml", overrides=["sft_stage2.train.max_steps=1"], only=["sft_stage2"],
                start_model=str(tiny_model), artifacts=artifacts)
    first = post_training(**args)
    assert list(first["stages"]) == ["sft_stage2"] and not first["stages"]["sft_stage2"]["cached"]
    assert first["stages"]["sft_stage2"]["summary"]["param_delta_l2"] > 0
    assert post_training(**args)["stages"]["sft_stage2"]["cached"]
    forced = post_training(**args, force=["sft_stage2"])["stages"]["sft_stage2"]
    assert not forced["cached"] and forced["key"] == first["stages"]["sft_stage2"]["key"]


@pytest.mark.slow
@pytest.mark.integration
def test_evaluate_flow_on_any_checkpoint(tiny_model, tmp_path, monkeypatch, prefect_harness):
    """``posttrain eval``'s flow: one task per benchmark, samples and table in the store, MLflow metrics."""
    from mlflow.tracking import MlflowClient

    from flows.evaluate import evaluate
    from posttrain.config import ClrSpec, SamplingSpec
    from posttrain.storage import ArtifactStore

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    artifacts = str(tmp_path / "artifacts")
    result = evaluate(str(tiny_model), ["synthetic_digits", "math500"], k=2, limit=3,
                      sampling=SamplingSpec(engine="hf", max_new_tokens=6), artifacts=artifacts,
                      clr_benchmarks=["math500"], clr=ClrSpec(k=2, claims=2, repeats=2, claim_max_new_tokens=8))
    assert set(result["table"]) == {"synthetic_digits", "math500"}
    assert result["table"]["math500"]["problems"] == 3 and "pass_at_2" in result["table"]["math500"]
    store = ArtifactStore.from_uri(artifacts)
    assert store.get_json(f"evals/{result['run_id']}/eval_table.json") == result["table"]
    lines = (tmp_path / "artifacts" / "evals" / result["run_id"] / "samples" / "math500.jsonl").read_text().splitlines()
    assert len(lines) == 6  # problems x k
    metrics = MlflowClient(uri).get_run(result["mlflow_run_id"]).data.metrics
    assert "eval/math500/avg_at_2" in metrics and "eval/synthetic_digits/pass_at_1" in metrics
    # CLR ran on math500 with the model judging its own claims; the output records its config
    clr = result["clr"]["math500"]
    assert clr["problems"] == 3 and 0 <= clr["clr_pass_at_1"] <= 1 and clr["prompt_version"] == "clr-v1"
    saved = store.get_json(f"evals/{result['run_id']}/clr/math500.json")
    assert saved["config"]["k"] == 2 and len(saved["samples"]) == 3 * 2  # problems x repeats
    assert "eval/math500/clr/clr_pass_at_1" in metrics
    # plots in the store and in MLflow
    for png in ("pass_at_k.png", "lengths.png"):
        assert (tmp_path / "artifacts" / "evals" / result["run_id"] / png).read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in MlflowClient(uri).list_artifacts(result["mlflow_run_id"])}
    assert {"pass_at_k.png", "lengths.png"} <= logged


@pytest.mark.slow
@pytest.mark.integration
def test_evaluate_flow_shards_and_retries_a_failed_shard_alone(tiny_model, tmp_path, monkeypatch, prefect_harness):
    import posttrain.eval.run as run
    from flows.evaluate import evaluate
    from posttrain.config import SamplingSpec

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    calls = []
    real = run.benchmark_part

    def flaky(engine, spec, sampling, data_root, out_dir, seed, shard=(0, 1)):
        calls.append(shard)
        if shard == (1, 3) and calls.count(shard) == 1:
            raise RuntimeError("worker lost")  # the first attempt of shard 1 fails
        return real(engine, spec, sampling, data_root, out_dir, seed, shard)

    monkeypatch.setattr(run, "benchmark_part", flaky)
    result = evaluate(str(tiny_model), ["math500"], k=2, limit=5, shards=3,
                      sampling=SamplingSpec(engine="hf", max_new_tokens=4), artifacts=str(tmp_path / "artifacts"))
    assert calls == [(0, 3), (1, 3), (1, 3), (2, 3)]  # only the failed shard ran twice
    assert result["table"]["math500"]["problems"] == 5 and result["table"]["math500"]["k"] == 2
    samples = sorted(p.name for p in (tmp_path / "artifacts" / "evals" / result["run_id"] / "samples").iterdir())
    assert samples == [f"math500.shard-{i}-of-3.jsonl" for i in range(3)]
