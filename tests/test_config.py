"""Every recipe loads; typos and bad overrides give errors naming the field."""

from pathlib import Path

import pytest

from posttrain.config import Recipe, RecipeError, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    for stage in (recipe.rl_math, recipe.rl_code, recipe.rl_stem, recipe.instruct_rl):
        assert stage.train.per_device_batch_size % stage.group_size == 0


def test_every_recipe_names_registered_sources():
    from posttrain.data import registered_sources

    known = set(registered_sources())
    for path in RECIPES:
        r = load_recipe(path)
        specs = [*r.sft_stage1.data, *r.sft_stage2.data, *r.rl_math.data, *r.rl_code.data, *r.rl_stem.data,
                 *r.distill.data, *r.instruct_rl.data, *r.instruct_rl.prompts.sources]
        assert {s.source for s in specs} <= known, path
        assert {b.name for b in r.evaluate.benchmarks} <= known, path


def test_typo_names_the_field(tmp_path):
    text = (RECIPES[0]).read_text().replace("group_size:", "group_sise:", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert "group_sise" in str(e.value) and "bad.yaml" in str(e.value)


def test_set_overrides():
    r = load_recipe(RECIPES[0], ["rl_math.train.max_steps=7", "seed=3"])
    assert r.rl_math.train.max_steps == 7 and r.seed == 3


def test_set_rejects_unknown_path():
    with pytest.raises(RecipeError, match="max_stepz"):
        load_recipe(RECIPES[0], ["rl_math.train.max_stepz=7"])
    with pytest.raises(RecipeError, match="nosuch"):
        load_recipe(RECIPES[0], ["nosuch.x=1"])
