"""Content keys: a stage's key changes with its config, its upstream and the code, and nothing else."""

from pathlib import Path

import pytest

from posttrain.config import load_recipe
from posttrain.pipeline import code_version, stage_key
from posttrain.plan import PIPELINE, make_plan

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def test_key_depends_on_config_upstream_and_code():
    r = load_recipe(SMOKE)
    base = stage_key("rl_math", r, "up", "v1")
    assert stage_key("rl_math", r, "up", "v1") == base
    assert stage_key("rl_math", load_recipe(SMOKE, ["rl_math.group_size=2"]), "up", "v1") != base
    assert stage_key("rl_math", r, "other", "v1") != base
    assert stage_key("rl_math", r, "up", "v2") != base
    # another stage's config does not touch this key
    assert stage_key("rl_math", load_recipe(SMOKE, ["rl_code.group_size=2"]), "up", "v1") == base


def test_plan_chains_keys_through_the_pipeline():
    r = load_recipe(SMOKE)
    plan = make_plan(r, str(SMOKE), PIPELINE)
    assert list(plan.stage_keys) == PIPELINE
    changed = make_plan(load_recipe(SMOKE, ["sft_stage2.train.max_steps=3"]), str(SMOKE), PIPELINE)
    same = [s for s in PIPELINE if plan.stage_keys[s] == changed.stage_keys[s]]
    assert same == ["prepare_model", "sft_stage1"]  # everything downstream of sft_stage2 moves


def test_plan_rejects_unknown_stage():
    with pytest.raises(ValueError, match="unknown"):
        make_plan(load_recipe(SMOKE), str(SMOKE), ["sft_stage3"])


def test_code_version_is_stable():
    assert code_version() == code_version()


def test_library_never_imports_prefect():
    root = Path(__file__).resolve().parents[1] / "posttrain"
    offenders = [p for p in root.rglob("*.py")
                 if any(line.strip().startswith(("import prefect", "from prefect")) for line in p.read_text().splitlines())]
    assert not offenders
