"""Offline self-distillation (3B §2.3): the NLL band selection on hand-built traces, NLL scoring
against a direct computation, and the stage on tiny specialists (kept, and nothing kept)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from posttrain.config import DistillSelection, DistillStage, load_recipe
from posttrain.context import StageContext
from posttrain.distill import Candidate, mean_nll, select_band
from posttrain.records import Record, Reference


def _cand(domain: str, i: int, tokens: int, nll: float) -> Candidate:
    record = Record(id=f"{domain}/{i}", domain=domain, prompt="p", verifier="math", reference=Reference(answer="1"),
                    source="t")
    return Candidate(record, f"trace {i}", tokens, nll)


def test_select_band_buckets_outliers_and_band():
    # math: 1 too short; lengths 10..80 -> two buckets split at the median length (45)
    math_traces = [_cand("math", 0, 3, 1.0)] + [_cand("math", i, 10 * i, nll) for i, nll in
                                                 zip(range(1, 9), [0.5, 1.0, 1.5, 2.0, 0.2, 0.4, 0.6, 0.8])]
    cfg = DistillSelection(min_tokens=5, outlier_z=3.0, length_buckets=2, nll_low_quantile=0.5, nll_high_quantile=1.0)
    kept, report = select_band(math_traces, cfg)
    m = report["math"]
    assert (m["candidates"], m["too_short"], m["outliers"]) == (9, 1, 0)
    assert m["edges"] == [10, 45, 80]
    # bucket 0 (10-40 tokens): NLLs 0.5, 1.0, 1.5, 2.0; median 1.25 -> keep 1.5 and 2.0
    # bucket 1 (50-80 tokens): NLLs 0.2, 0.4, 0.6, 0.8; median 0.5 -> keep 0.6 and 0.8
    assert [c.record.id for c in kept] == ["math/3", "math/4", "math/7", "math/8"]
    b0, b1 = m["buckets"]
    assert (b0["traces"], b0["below_band"], b0["above_band"], b0["kept"]) == (4, 2, 0, 2)
    assert b0["nll_band"] == [1.25, 2.0] and b1["nll_band"] == pytest.approx([0.5, 0.8])
    assert m["kept"] == 4


def test_select_band_drops_nll_outliers_per_domain():
    # ten ordinary NLLs around 1 and one at 50: |z| > 2 only for the outlier
    traces = [_cand("code", i, 20, 1.0 + 0.01 * i) for i in range(10)] + [_cand("code", 10, 20, 50.0)]
    kept, report = select_band(traces, DistillSelection(min_tokens=1, outlier_z=2.0, length_buckets=1,
                                                        nll_low_quantile=0.0, nll_high_quantile=1.0))
    assert report["code"]["outliers"] == 1 and len(kept) == 10
    assert all(c.nll < 2 for c in kept)


def test_select_band_domains_are_independent_and_empty_is_fine():
    traces = [_cand("math", i, 10, float(i)) for i in range(4)] + [_cand("stem", i, 10, 10.0 + i) for i in range(4)]
    kept, report = select_band(traces, DistillSelection(min_tokens=1, length_buckets=1, nll_low_quantile=0.5))
    # each domain keeps its own upper half, although every stem NLL is above every math NLL
    assert sorted(c.record.id for c in kept) == ["math/2", "math/3", "stem/2", "stem/3"]
    assert select_band([], DistillSelection()) == ([], {})
    with pytest.raises(ValueError, match="nll_low_quantile"):
        DistillSelection(nll_low_quantile=0.9, nll_high_quantile=0.5)


def test_mean_nll_matches_a_direct_computation(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = [([{"role": "user", "content": "Repeat: 1 2 3"}], "1 2 3"),
             ([{"role": "user", "content": "A much longer prompt that pads the other one"}], "yes"),
             ([{"role": "user", "content": "Say 7"}], "7 7 7 7 7 7 7")]
    got = mean_nll(tiny_model, pairs, batch_size=2)  # batches of 2 and 1: padding must not matter
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    for (messages, completion), (tokens, nll) in zip(pairs, got):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        direct = -sum(float(logp[t - 1, ids[t]]) for t in range(len(p_ids), len(ids))) / (len(ids) - len(p_ids))
        assert tokens == len(ids) - len(p_ids)
        assert nll == pytest.approx(direct, rel=1e-4)
        assert math.isfinite(nll) and nll > 0


def _context(tmp_path, inputs, data_root) -> StageContext:
    out = tmp_path / "distill"
    out.mkdir()
    return StageContext(stage="distill", recipe=load_recipe("recipes/smoke.yaml"), out_dir=out, inputs=inputs,
                        data_root=str(data_root))


@pytest.mark.slow
def test_stage_samples_specialists_and_trains_on_the_band(policy, tiny_model, data_root, tmp_path):
    from posttrain.checkpoints import param_delta
    from posttrain.distill import run_distill_stage

    cfg = DistillStage.model_validate({
        "data": [{"source": "synthetic_digits_1", "limit": 12}], "specialists": {"synthetic": "rl_math"},
        "samples_per_prompt": 4, "sampling": {"engine": "hf", "max_new_tokens": 8},
        "selection": {"min_tokens": 2, "length_buckets": 2, "nll_low_quantile": 0.25},
        "train": {"max_steps": 2, "learning_rate": 1e-3, "per_device_batch_size": 4}, "max_length": 64})
    # the specialist (the trained policy) samples; the student is the untrained tiny model
    ctx = _context(tmp_path, {"model": tiny_model, "rl_math": policy}, data_root)
    summary = run_distill_stage(ctx, cfg)
    report = json.loads((ctx.out_dir / "distill_report.json").read_text())
    sampled = report["sampling"]["synthetic"]
    assert sampled["prompts"] == 12 and sampled["samples"] == 48 and sampled["verified"] > 0
    band = report["bands"]["synthetic"]
    assert band["candidates"] == summary["verified"] == sampled["verified"] - sampled["duplicates"]
    assert 0 < summary["kept"] == band["kept"] < band["candidates"]  # the band drops the low-NLL quarter
    lines = [json.loads(x) for x in (ctx.out_dir / "traces.jsonl").read_text().splitlines()]
    assert len(lines) == summary["kept"] and all(x["specialist"] == "rl_math" and x["nll"] > 0 for x in lines)
    assert sum(row["kept"] for row in summary["distill_table"]) == summary["kept"]
    assert param_delta(tiny_model, ctx.out_dir / "model")["l2"] > 0


@pytest.mark.slow
def test_stage_passes_the_student_through_when_nothing_verifies(tiny_model, data_root, tmp_path):
    from posttrain.checkpoints import param_delta
    from posttrain.distill import run_distill_stage

    cfg = DistillStage.model_validate({"data": [{"source": "math_train", "limit": 2}], "samples_per_prompt": 2,
                                       "sampling": {"engine": "hf", "max_new_tokens": 4}})
    ctx = _context(tmp_path, {"model": tiny_model}, data_root)  # no specialist given: the student samples
    summary = run_distill_stage(ctx, cfg)
    assert summary["kept"] == 0 and "passes through unchanged" in summary["note"]
    assert param_delta(tiny_model, ctx.out_dir / "model")["max_abs"] == 0
    assert json.loads((ctx.out_dir / "distill_report.json").read_text())["note"] == summary["note"]


def test_unknown_domain_and_specialist_are_clear_errors(tiny_model, data_root, tmp_path):
    from posttrain.distill import sample_specialists

    with pytest.raises(ValueError, match="rl_maths"):
        DistillStage.model_validate({"data": [], "specialists": {"math": "rl_maths"}})
    record = Record(id="x/1", domain="dialogue", prompt="p", verifier="math", reference=Reference(answer="1"), source="x")
    with pytest.raises(ValueError, match="dialogue"):
        sample_specialists([record], {"math": tiny_model}, DistillStage(data=[]), seed=0)
