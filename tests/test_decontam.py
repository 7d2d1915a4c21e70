"""Decontamination (design.md §1.6): a planted overlap is found, template phrases are not
contamination, and the real near-duplicates between shipped training and benchmark files are found."""

from __future__ import annotations

import pytest

from posttrain.eval.decontam import find_contamination, ngram_hashes, normalise
from posttrain.records import Record, Reference

STORY = ("A farmer plants {n} rows of carrots in a field next to the old mill and each row holds exactly "
         "{m} carrots which the farmer sells at the market every Saturday morning before noon")
BOILERPLATE = ("The first line of input contains a single integer t the number of test cases. Each of the next "
               "t lines contains two integers separated by a space. Output one line per test case.")


def _rec(i: str, text: str, source: str = "t") -> Record:
    return Record(id=f"{source}/{i}", domain="math", prompt=text, verifier="math", reference=Reference(answer="1"),
                  source=source, meta={"problem": text})


def test_normalisation():
    assert normalise("Hello,   World! It's 3.5") == ["hello", "world", "it", "s", "3", "5"]
    assert ngram_hashes("one two three", n=10) == set()
    assert ngram_hashes("A b, c d e f g h i j") == ngram_hashes("a B c D e f g h i j!")


def test_planted_overlap_is_found_and_unrelated_items_are_not():
    bench = [_rec(str(i), STORY.format(n=i, m=i + 7), "bench") for i in range(5)]
    train = [_rec(str(i), f"Unrelated question number {i} about the weather in a small coastal town today") for i in range(50)]
    train.append(_rec("planted", "Solve this: " + bench[3].prompt + " How many carrots in total?"))
    report = find_contamination({"train": train}, {"bench": bench}, template_min_docs=20)
    assert [(m.benchmark_id, m.training_id) for m in report.matches] == [("bench/3", "t/planted")]
    assert report.matches[0].share == pytest.approx(1.0)
    assert report.pairs()[0]["contaminated"] == 1 and report.contaminated_training_ids() == {"t/planted"}


def test_shared_template_phrases_are_not_contamination():
    stories = ["Alice counts apples in her orchard", "Bob paints fences around the stadium",
               "Carol sorts books on the library shelves", "Dan measures rivers across the valley"]
    bench = [_rec(str(i), f"{stories[i % 4]} on day {i} of the festival. {BOILERPLATE}", "bench") for i in range(20)]
    train = [_rec(str(i), f"Erin juggles {i} torches while riding a unicycle near the harbour lights. {BOILERPLATE}")
             for i in range(30)]
    report = find_contamination({"train": train}, {"bench": bench}, template_min_docs=20)
    assert report.template_ngrams > 0 and report.matches == []


@pytest.mark.slow
def test_real_near_duplicates_in_the_shipped_files(data_root):
    from posttrain.data import load_mixture

    def load(name):
        return load_mixture([{"source": name}], str(data_root))

    report = find_contamination({"math_train": load("math_train"), "mbpp_train": load("mbpp_train")},
                                {"math500": load("math500"), "mbpp_test": load("mbpp_test")})
    found = {(r["training"], r["benchmark"]): r["contaminated"] for r in report.pairs()}
    assert found.get(("math_train", "math500"), 0) > 0, report.pairs()


@pytest.mark.slow
def test_recipe_check_drops_or_fails_and_is_stored(data_root, tmp_path):
    from posttrain.config import load_recipe
    from posttrain.context import StageContext
    from posttrain.pipeline import excluded_ids
    from posttrain.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    only = "decontamination.benchmarks=[math500, mbpp_test]"
    recipe = load_recipe("recipes/smoke.yaml", [only])
    dropped = excluded_ids(recipe, str(data_root), store)
    assert "math_train/precalculus/474" in dropped  # the same problem as MATH-500 precalculus/285
    assert any(i.startswith("mbpp_train/") for i in dropped)
    assert len(list((tmp_path / "store" / "decontamination").glob("*.json"))) == 1  # stored once, reused
    assert excluded_ids(recipe, str(data_root), store) == dropped
    # a stage's loader leaves the dropped records out
    ctx = StageContext(stage="sft_stage2", recipe=recipe, out_dir=tmp_path, data_root=str(data_root),
                       exclude_ids=frozenset({"math_train/precalculus/474"}))
    spec = {"source": "math_train", "where": {"type": ["Precalculus"]}}
    assert len(ctx.load([spec])) == len(StageContext(stage="x", recipe=recipe, out_dir=tmp_path,
                                                     data_root=str(data_root)).load([spec])) - 1
    with pytest.raises(ValueError, match="math_train ~ math500"):
        excluded_ids(load_recipe("recipes/smoke.yaml", [only, "decontamination.action=fail"]), str(data_root), store)
    assert excluded_ids(load_recipe("recipes/smoke.yaml", ["decontamination.action=skip"]), str(data_root), store) == set()
