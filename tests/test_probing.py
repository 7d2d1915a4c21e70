"""Diversity probing (1.5B §3.1-3.3): probe-set split, per-subdomain argmax, heat map, and real
probing of checkpoints saved during a tiny SFT run."""

from __future__ import annotations

import pytest

from posttrain.data import load_mixture, make_digit_records
from posttrain.probing import (
    ProbeSettings,
    expert_weights,
    heatmap_png,
    matrix_table,
    probe_callback,
    run_probing,
    saved_checkpoints,
    select_best,
    split_probe_sets,
    step_of,
)
from posttrain.records import Record, Reference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MATH_TYPES = {"Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory",
              "Prealgebra", "Precalculus"}


def _math(i: int, subject: str | None) -> Record:
    meta = {"problem": f"p{i}"} | ({"type": subject} if subject else {})
    return Record(id=f"m/{i}", domain="math", prompt=f"p{i}", verifier="math", reference=Reference(answer="1"),
                  source="math_train", meta=meta)


# ---------------------------------------------------------------- select_best (pure)


@pytest.mark.parametrize("matrix, expected", [
    # hand-made: each subdomain's argmax
    ({"step-1": {"algebra": 0.2, "geometry": 0.9}, "step-2": {"algebra": 0.7, "geometry": 0.5},
      "step-3": {"algebra": 0.4, "geometry": 0.1}}, {"algebra": "step-2", "geometry": "step-1"}),
    # a tie goes to the later checkpoint
    ({"step-1": {"a": 0.5, "b": 0.25}, "step-2": {"a": 0.5, "b": 0.75}, "step-3": {"a": 0.25, "b": 0.75}},
     {"a": "step-2", "b": "step-3"}),
    # probing cannot tell them apart: fall back to the last one (plain SFT)
    ({"step-2": {"a": 0.0}, "step-4": {"a": 0.0}, "step-6": {"a": 0.0}}, {"a": "step-6"}),
    # equal up to float rounding counts as a tie
    ({"x": {"a": 0.1 + 0.2}, "y": {"a": 0.3}}, {"a": "y"}),
    ({"only": {"a": 0.1, "b": 0.0}}, {"a": "only", "b": "only"}),
])
def test_select_best_argmax_per_subdomain(matrix, expected):
    assert select_best(matrix) == expected


def test_select_best_rejects_empty_and_ragged():
    with pytest.raises(ValueError, match="empty"):
        select_best({})
    with pytest.raises(ValueError, match="step-2"):
        select_best({"step-1": {"a": 0.1, "b": 0.2}, "step-2": {"a": 0.3}})


def test_expert_weights_count_subdomains_per_checkpoint():
    weights = expert_weights({"algebra": "step-4", "geometry": "step-2", "calculus": "step-4"})
    assert weights == pytest.approx({"step-4": 2 / 3, "step-2": 1 / 3})
    assert sum(weights.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expert_weights({})


def test_matrix_table_rows():
    matrix = {"step-1": {"a": 0.123456, "b": 1.0}, "step-2": {"a": 0.5, "b": 0.0}}
    assert matrix_table(matrix, select_best(matrix)) == [
        {"checkpoint": "step-1", "a": 0.1235, "b": 1.0}, {"checkpoint": "step-2", "a": 0.5, "b": 0.0},
        {"checkpoint": "best", "a": "step-2", "b": "step-1"}]


# ---------------------------------------------------------------- split_probe_sets (pure)


def test_split_by_source_holds_out_per_subdomain():
    records = (make_digit_records(20, seed=1, source="synthetic_digits")
               + make_digit_records(6, seed=2, length=1, source="synthetic_digits_1"))
    train, probes = split_probe_sets(records, "source", per_subdomain=4, seed=0)
    # at most half of a subdomain is held out: 6 records give 3
    assert {k: len(v) for k, v in probes.items()} == {"synthetic_digits": 4, "synthetic_digits_1": 3}
    held = {r.id for v in probes.values() for r in v}
    assert held.isdisjoint(r.id for r in train)
    assert len(train) + len(held) == len(records)
    assert [r.id for r in train] == [r.id for r in records if r.id not in held]  # input order kept
    assert all(r.source == name for name, v in probes.items() for r in v)
    again = split_probe_sets(list(reversed(records)), "source", per_subdomain=4, seed=0)[1]
    assert {k: {r.id for r in v} for k, v in again.items()} == {k: {r.id for r in v} for k, v in probes.items()}
    other = split_probe_sets(records, "source", per_subdomain=4, seed=1)[1]
    assert {r.id for v in other.values() for r in v} != held  # the seed picks the probe set


def test_split_by_meta_key_skips_records_without_it():
    records = [_math(i, s) for i, s in enumerate(["Algebra"] * 6 + ["Geometry"] * 2 + ["Precalculus"] + [None] * 3)]
    train, probes = split_probe_sets(records, "type", per_subdomain=2, seed=0)
    # Precalculus has a single record: not probed (it would vanish from training)
    assert {k: len(v) for k, v in probes.items()} == {"Algebra": 2, "Geometry": 1}
    assert sum(1 for r in train if "type" not in r.meta) == 3 and len(train) == 12 - 3


def test_split_with_key_per_domain():
    records = [_math(i, "Algebra") for i in range(4)] + make_digit_records(4, seed=0)
    _, probes = split_probe_sets(records, {"math": "type", "synthetic": "source"}, per_subdomain=1)
    assert sorted(probes) == ["math/Algebra", "synthetic/synthetic_digits"]


def test_split_errors():
    records = make_digit_records(8)
    with pytest.raises(ValueError, match="no subdomain"):
        split_probe_sets(records, "typo", per_subdomain=2)
    with pytest.raises(ValueError, match="per_subdomain"):
        split_probe_sets(records, "source", per_subdomain=0)


def test_split_real_math_by_type(data_root):
    records = load_mixture([{"source": "math_train", "limit": 300}], str(data_root))
    train, probes = split_probe_sets(records, "type", per_subdomain=5, seed=0)
    assert set(probes) <= MATH_TYPES and len(probes) >= 5
    assert all(len(v) == 5 and all(r.meta["type"] == k for r in v) for k, v in probes.items())
    assert len(train) == len(records) - 5 * len(probes)


# ---------------------------------------------------------------- heat map, names


def test_heatmap_writes_png(tmp_path):
    matrix = {f"step-{s}": {"Algebra": s / 10, "Geometry": 1 - s / 10, "Counting & Probability": 0.5}
              for s in (2, 4, 6)}
    path = heatmap_png(matrix, tmp_path / "out" / "heat.png", title="pass@4")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    with pytest.raises(ValueError):
        heatmap_png({}, tmp_path / "empty.png")


def test_saved_checkpoints_sorted_by_step(tmp_path):
    for name in ("step-10", "step-9", "step-2", "step-11.tmp", "other"):
        (tmp_path / "probe-checkpoints" / name).mkdir(parents=True)
    assert [p.name for p in saved_checkpoints(tmp_path)] == ["step-2", "step-9", "step-10"]
    assert saved_checkpoints(tmp_path / "missing") == []
    assert step_of("step-12") == 12
    with pytest.raises(ValueError):
        step_of("checkpoint-12")
    with pytest.raises(ValueError, match="every"):
        probe_callback(tmp_path, every=0)


# ---------------------------------------------------------------- end to end on the tiny model


def _sft(tiny_model, records, out, callbacks):
    from posttrain.config import TrainSpec
    from posttrain.sft import sft_pairs, train_sft

    train = TrainSpec(max_steps=5, learning_rate=1e-2, per_device_batch_size=8, lr_scheduler_type="constant")
    return train_sft(sft_pairs(records), tiny_model, out, train, max_length=64, packing=False, seed=0,
                     callbacks=callbacks)


@pytest.fixture(scope="module")
def probed_run(tiny_model, data_root, tmp_path_factory):
    """SFT the tiny model 5 steps on the two synthetic sources, saving a probe checkpoint every 2 steps."""
    records = load_mixture([{"source": "synthetic_digits", "limit": 32}, {"source": "synthetic_digits_1", "limit": 32}],
                           str(data_root), seed=0)
    train, probes = split_probe_sets(records, "source", per_subdomain=4, seed=0)
    out = tmp_path_factory.mktemp("probed")
    _sft(tiny_model, train, out / "model", [probe_callback(out, every=2)])
    return out, train, probes


@pytest.mark.slow
def test_probe_callback_saves_without_changing_training(probed_run, tiny_model, tmp_path):
    from posttrain.checkpoints import param_delta

    out, train, _ = probed_run
    checkpoints = saved_checkpoints(out)
    assert [p.name for p in checkpoints] == ["step-2", "step-4", "step-5"]  # every 2, and the last step
    assert param_delta(checkpoints[0], checkpoints[1])["l2"] > 0  # the live model, not a stale copy
    assert param_delta(checkpoints[-1], out / "model")["max_abs"] == 0  # the last one is the final model
    _sft(tiny_model, train, tmp_path / "plain", [])
    assert param_delta(tmp_path / "plain", out / "model")["max_abs"] == 0, "probing must not change training"


@pytest.mark.slow
def test_run_probing_scores_every_checkpoint_by_sampling(probed_run, tmp_path):
    out, _, probes = probed_run
    checkpoints = saved_checkpoints(out)
    logged = []
    cfg = ProbeSettings(every=2, key="source", per_subdomain=4, k=2, samples=4, max_new_tokens=6, engine="hf")
    matrix, selection = run_probing(checkpoints, probes, cfg, seed=0, out_dir=tmp_path / "report",
                                    log_metrics=lambda metrics, step: logged.append((step, metrics)))
    assert list(matrix) == ["step-2", "step-4", "step-5"]
    assert all(set(row) == {"synthetic_digits", "synthetic_digits_1"} for row in matrix.values())
    assert all(0.0 <= v <= 1.0 for row in matrix.values() for v in row.values())
    assert selection == select_best(matrix)
    assert [step for step, _ in logged] == [2, 4, 5]
    assert set(logged[0][1]) == {"probe/synthetic_digits/pass_at_2", "probe/synthetic_digits_1/pass_at_2"}
    report = tmp_path / "report"
    assert (report / "probe_heatmap.png").read_bytes()[:8] == PNG_SIGNATURE
    import json

    saved = json.loads((report / "probe_report.json").read_text())
    assert saved["matrix"] == matrix and saved["selection"] == selection and saved["k"] == 2
    assert sum(saved["weights"].values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_run_probing_with_vllm_opens_one_engine_per_checkpoint(probed_run):
    out, _, probes = probed_run
    cfg = ProbeSettings(k=2, max_new_tokens=4, engine="vllm")
    matrix, selection = run_probing(saved_checkpoints(out)[-2:], probes, cfg)
    assert list(matrix) == ["step-4", "step-5"] and set(selection) == set(probes)
