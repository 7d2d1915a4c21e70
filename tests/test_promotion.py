"""The promotion gate (paired bootstrap over problems), per-problem scores of the evaluate stage,
and the MLflow registry of candidates and the champion against a real ``mlflow server``."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from posttrain.config import PromotionSpec
from posttrain.promotion import decide, decision_markdown, paired_bootstrap, problem_scores


def _table(prefix: str, values: list[float]) -> dict[str, float]:
    return {f"{prefix}/{i}": v for i, v in enumerate(values)}


# --- bootstrap figures on hand-checkable tables ------------------------------------------------

def test_constant_difference_gives_a_point_interval():
    """Every paired difference is 0.25, so every resample's mean is 0.25."""
    cand = {"a": 0.75, "b": 0.5, "c": 1.0}
    champ = {"a": 0.5, "b": 0.25, "c": 0.75, "only-champion": 0.0}
    r = paired_bootstrap(cand, champ, samples=500, seed=3)
    assert r.problems == 3
    assert (r.mean_difference, r.interval, r.lower_bound) == (0.25, (0.25, 0.25), 0.25)
    assert r.candidate_mean == 0.75 and r.champion_mean == 0.5
    assert r.above_margin == 1.0
    assert paired_bootstrap(cand, champ, 500, 3, margin=0.25).above_margin == 0.0  # "above" is strict


def test_two_problems_resample_distribution():
    """d = (1, 0): a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4."""
    r = paired_bootstrap({"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 0.0}, samples=40_000, seed=0)
    assert r.mean_difference == 0.5
    assert r.interval == (0.0, 1.0)  # 2.5% and 97.5% quantiles
    assert r.lower_bound == 0.0  # 5% quantile
    assert r.above_margin == pytest.approx(0.75, abs=0.01)
    assert paired_bootstrap({"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 0.0}, 40_000, 0,
                            margin=0.5).above_margin == pytest.approx(0.25, abs=0.01)


def test_bootstrap_is_seeded_and_ignores_dict_order():
    cand, champ = _table("p", [1, 0, 1, 1, 0, 0.5]), _table("p", [0, 0, 1, 0.5, 1, 0.25])
    a = paired_bootstrap(cand, champ, 2000, seed=7)
    b = paired_bootstrap(dict(reversed(list(cand.items()))), champ, 2000, seed=7)
    assert a == b
    assert paired_bootstrap(cand, champ, 2000, seed=8) != a


def test_no_common_problems_is_an_error_naming_the_counts():
    with pytest.raises(ValueError, match="candidate scores 2, the champion 3"):
        paired_bootstrap({"a": 1, "b": 1}, {"c": 0, "d": 0, "e": 0}, 100, 0)


# --- the decision ------------------------------------------------------------------------------

SPEC = PromotionSpec(bootstrap_samples=2000, seed=0)


def test_clearly_better_candidate_is_promoted():
    cand = {"aime": _table("aime", [0.8] * 30), "math": _table("math", [1.0, 0.75] * 20)}
    champ = {"aime": _table("aime", [0.2] * 30), "math": _table("math", [0.5, 0.25] * 20)}
    d = decide(cand, champ, SPEC)
    assert d.promote and d.reason.startswith("promote:")
    assert d.gate == ["aime", "math"] and d.pooled.problems == 70
    assert d.pooled.lower_bound > 0
    aime = d.rows[0]
    assert (aime.benchmark, aime.problems) == ("aime", 30)
    assert (aime.candidate, aime.champion) == pytest.approx((0.8, 0.2))
    assert aime.difference == pytest.approx(0.6) and aime.interval == pytest.approx((0.6, 0.6))


def test_worse_candidate_is_not_promoted():
    cand = {"aime": _table("aime", [0.2, 0.0] * 15)}
    champ = {"aime": _table("aime", [0.8, 0.5] * 15)}
    d = decide(cand, champ, SPEC)
    assert not d.promote and d.reason.startswith("keep the champion:")
    assert d.pooled.mean_difference == pytest.approx(-0.55)


def test_exact_tie_keeps_the_champion():
    scores = {"aime": _table("aime", [0.25, 0.5, 1.0] * 5)}
    d = decide(scores, json.loads(json.dumps(scores)), SPEC)
    assert not d.promote and "exactly the same" in d.reason
    assert d.pooled.interval == (0.0, 0.0)


def test_no_champion_promotes_the_first_one():
    d = decide({"aime": _table("aime", [0.5, 0.0]), "math": _table("math", [1.0])}, None, SPEC)
    assert d.promote and d.first_champion and d.pooled is None
    assert [(r.benchmark, r.problems, r.candidate, r.champion) for r in d.rows] == [
        ("aime", 2, 0.25, None), ("math", 1, 1.0, None)]
    assert "first champion" in d.reason


def test_gate_subset_decides_on_its_benchmarks_only():
    """Better on aime (30 problems), much worse on gsm8k (200): the gate decides which counts."""
    cand = {"aime": _table("aime", [0.9] * 30), "gsm8k": _table("gsm8k", [0.1] * 200)}
    champ = {"aime": _table("aime", [0.3] * 30), "gsm8k": _table("gsm8k", [0.6] * 200)}
    gated = decide(cand, champ, SPEC.model_copy(update={"gate": ["aime"]}))
    assert gated.promote and gated.gate == ["aime"] and [r.benchmark for r in gated.rows] == ["aime"]
    pooled = decide(cand, champ, SPEC)
    assert not pooled.promote and pooled.pooled.problems == 230


def test_gate_benchmark_missing_is_an_error():
    cand, champ = {"aime": {"p": 1.0}}, {"math": {"p": 0.0}}
    with pytest.raises(ValueError, match=r"\['math'\] not evaluated for the candidate"):
        decide(cand, champ, SPEC.model_copy(update={"gate": ["math"]}))
    with pytest.raises(ValueError, match="share no benchmark"):
        decide(cand, champ, SPEC)


def test_min_improvement_is_a_margin():
    cand, champ = {"b": _table("b", [0.55] * 10)}, {"b": _table("b", [0.5] * 10)}  # every difference 0.05
    assert decide(cand, champ, SPEC).promote
    assert not decide(cand, champ, SPEC.model_copy(update={"min_improvement": 0.1})).promote


def test_decision_markdown_shows_the_figures():
    cand = {"aime": _table("aime", [0.75] * 4)}
    champ = {"aime": _table("aime", [0.5] * 4)}
    md = decision_markdown(decide(cand, champ, SPEC))
    assert md.startswith("### Promote the candidate")
    assert "| aime | 4 | 0.750 | 0.500 | +0.250 | [+0.250, +0.250] |" in md
    assert "| **pooled** | 4 |" in md and "lower bound +0.2500 vs margin 0.0000" in md
    assert "100.0% of 2,000 paired resamples" in md


# --- per-problem scores from the evaluate stage ----------------------------------------------------

def test_benchmark_part_writes_per_problem_scores(data_root, tmp_path):
    """A stand-in engine answers each digit problem once right and once wrong: avg 0.5 per problem."""
    from posttrain.config import BenchmarkSpec, SamplingSpec
    from posttrain.engines import Completion
    from posttrain.eval.run import run_benchmark

    class HalfRight:
        def generate(self, prompts, params):
            answers = ["".join(re.findall(r"\d", p[-1]["content"])) for p in prompts]
            return [[Completion(a, 4, "stop"), Completion("x", 1, "stop")] for a in answers]

    figures = run_benchmark(HalfRight(), BenchmarkSpec(name="synthetic_digits", limit=5, k=2), SamplingSpec(),
                            str(data_root), tmp_path, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "problems" / "synthetic_digits.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {(r["k"], r["correct"], r["avg"]) for r in rows} == {(2, 1, 0.5)}
    assert all(0.5 <= r["score"] < 1 for r in rows)  # the wrong one scores 0 (no digit in it)
    scores = problem_scores(tmp_path)
    assert list(scores) == ["synthetic_digits"] and set(scores["synthetic_digits"].values()) == {0.5}
    assert sum(scores["synthetic_digits"].values()) / 5 == figures["avg_at_2"]


def test_problem_scores_merge_shards_and_read_old_outputs(tmp_path):
    new = tmp_path / "new" / "problems"
    new.mkdir(parents=True)
    (new / "aime.shard-0-of-2.jsonl").write_text(json.dumps({"id": "a/1", "k": 2, "correct": 2, "avg": 1.0,
                                                              "score": 1.0}) + "\n")
    (new / "aime.shard-1-of-2.jsonl").write_text(json.dumps({"id": "a/2", "k": 2, "correct": 0, "avg": 0.0,
                                                              "score": 0.25}) + "\n")
    assert problem_scores(tmp_path / "new") == {"aime": {"a/1": 1.0, "a/2": 0.0}}
    assert problem_scores(tmp_path / "new", metric="score") == {"aime": {"a/1": 1.0, "a/2": 0.25}}
    old = tmp_path / "old" / "samples"  # an evaluation published before problems/ existed
    old.mkdir(parents=True)
    lines = [{"id": "m/1", "passed": True, "score": 1.0}, {"id": "m/1", "passed": False, "score": 0.5},
             {"id": "m/2", "passed": False, "score": 0.0}, {"id": "m/2", "passed": False, "score": 0.0}]
    (old / "math500.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert problem_scores(tmp_path / "old") == {"math500": {"m/1": 0.5, "m/2": 0.0}}
    with pytest.raises(FileNotFoundError, match="not an evaluation output"):
        problem_scores(tmp_path)
    with pytest.raises(ValueError, match="metric"):
        problem_scores(tmp_path / "new", metric="pass")


# --- the model registry against a real MLflow server ---------------------------------------------

@pytest.fixture
def registry_env(mlflow_server, monkeypatch, tmp_path):
    """MLFLOW_TRACKING_URI at the server; a pipeline parent run and its run record; a fresh model name."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("promotion-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment("promotion-tests")

    def pipeline_run(run_id: str) -> tuple[str, str]:
        mlflow_run = client.create_run(exp_id, run_name=run_id).info.run_id
        record = tmp_path / "artifacts" / "runs" / f"{run_id}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"run_id": run_id, "stages": [
            {"stage": "instruct_rl", "key": f"i-{run_id}", "uri": f"/art/stages/instruct_rl/i-{run_id}"},
            {"stage": "evaluate", "key": f"e-{run_id}", "uri": f"/art/stages/evaluate/e-{run_id}"}]}))
        return mlflow_run, str(record)

    return client, f"posttrain-{uuid.uuid4().hex[:8]}", pipeline_run


TABLE = {"aime2025": {"k": 4, "problems": 30, "avg_at_4": 0.25, "pass_at_4": 0.5}}


@pytest.mark.integration
def test_register_promote_and_move_the_champion(registry_env):
    from posttrain import registry

    client, name, pipeline_run = registry_env
    assert registry.champion(name) is None and registry.candidates(name) == []
    run1, record1 = pipeline_run("run1")
    v1 = registry.register_candidate(name, "/art/stages/instruct_rl/i-run1", run1, TABLE, record1)
    assert v1.source == f"runs:/{run1}/candidate" and v1.run_id == run1 and v1.aliases == ["candidate"]
    assert v1.tags[registry.TAG_SOURCE] == "/art/stages/instruct_rl/i-run1"
    assert v1.tags[registry.TAG_EVALUATE_URI] == "/art/stages/evaluate/e-run1"
    assert json.loads(v1.tags[registry.TAG_EVAL]) == TABLE and registry.pipeline_run_id(v1) == "run1"
    assert {f.path for f in client.list_artifacts(run1, "candidate")} == {"candidate/eval_table.json",
                                                                          "candidate/run_record.json"}
    info = registry.version_info(v1)
    assert info["run_id"] == "run1" and info["mlflow_run_id"] == run1 and info["eval_table"] == TABLE
    assert info["stage_keys"] == {"instruct_rl": "i-run1", "evaluate": "e-run1"}
    assert info["artifacts"] == record1.removesuffix("/runs/run1.json")
    assert registry.promote(name, v1.version) is None
    assert registry.champion(name).version == v1.version

    run2, record2 = pipeline_run("run2")  # an S3 output is accepted as the version source as it is
    v2 = registry.register_candidate(name, "s3://bucket/stages/instruct_rl/i-run2", run2, TABLE, record2,
                                     artifacts="s3://bucket", tags={"data_snapshot": "abc"})
    assert v2.source == "s3://bucket/stages/instruct_rl/i-run2" and v2.tags["data_snapshot"] == "abc"
    assert registry.version_info(v2)["artifacts"] == "s3://bucket"
    aliases = registry.versions_by_alias(name)
    assert aliases["candidate"].version == v2.version and aliases["champion"].version == v1.version
    assert [v.version for v in registry.candidates(name)] == [v2.version, v1.version]
    assert registry.promote(name, v2.version).version == v1.version
    assert registry.champion(name).version == v2.version
    assert client.get_model_version(name, v2.version).tags[registry.TAG_PREVIOUS] == v1.version


@pytest.mark.integration
def test_failed_check_leaves_the_champion_alias(registry_env):
    from posttrain import registry

    client, name, pipeline_run = registry_env
    run1, record1 = pipeline_run("run1")
    v1 = registry.register_candidate(name, "/art/stages/instruct_rl/i-run1", run1, TABLE, record1)
    registry.promote(name, v1.version)
    bare = client.create_model_version(name, f"runs:/{run1}/candidate", run_id=run1)  # no evaluation stored
    with pytest.raises(registry.RegistryError, match="no stored evaluation"):
        registry.promote(name, bare.version)
    with pytest.raises(registry.RegistryError, match="version 99 cannot be read"):
        registry.promote(name, 99)
    assert registry.champion(name).version == v1.version
    with pytest.raises(registry.RegistryError, match="evaluation table"):
        registry.register_candidate(name, "/x", run1, {}, record1)
