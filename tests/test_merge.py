"""Expert fusion (posttrain.merge, 3B §2.1): exactness, averages, refusals, sharding, LoRA adapters."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from posttrain.merge import fuse_checkpoints, merge_adapter, normalise_weights, weighted_sum
from posttrain.safetensors_io import INDEX_FILE, SINGLE_FILE

TEXTS = ["Solve 12 + 30 = 42 and 7 * 6 = 42.", "The answer is \\boxed{5}.", "def f(x):\n    return x * 2\n"] * 4
OTHER_TEXTS = ["Quelle est la réponse ? Voilà : quarante-deux.", "Ein anderer Text, andere Wörter."] * 4
VOCAB = 320  # fixed in config.json, so two different tokenizers leave the configs equal


def _make(out: Path, tokenizer, seed: int, **overrides) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
               num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True)
    cfg.update(overrides)
    Qwen2ForCausalLM(Qwen2Config(**cfg)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from posttrain.modeling import train_tiny_tokenizer

    root = tmp_path_factory.mktemp("fusion")
    tok = train_tiny_tokenizer(TEXTS, VOCAB)
    return {"a": _make(root / "a", tok, 0), "b": _make(root / "b", tok, 1),
            "wider": _make(root / "wider", tok, 2, intermediate_size=96),
            "other_tok": _make(root / "other_tok", train_tiny_tokenizer(OTHER_TEXTS, VOCAB), 0)}


@pytest.mark.parametrize("copies", [2, 3])
def test_self_merge_is_bit_exact(models, tmp_path, copies):
    summary = fuse_checkpoints([models["a"]] * copies, tmp_path / "out")
    got, want = _weights(tmp_path / "out"), _weights(models["a"])
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert summary["identical_tensors"] == summary["tensors"] == len(want)
    assert summary["weights"] == pytest.approx([1 / copies] * copies)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads(
        (models["a"] / "config.json").read_text())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [3, 7])
def test_weighted_sum_of_copies_is_exact_without_the_equality_shortcut(dtype, n):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(weighted_sum([x] * n, normalise_weights(None, n)), x)


@pytest.mark.parametrize("weights", [None, [0.25, 0.75], [1, 3]])
def test_two_models_average(models, tmp_path, weights):
    summary = fuse_checkpoints([models["a"], models["b"]], tmp_path / "out", weights)
    wa, wb = (0.5, 0.5) if weights is None else (0.25, 0.75)
    assert summary["weights"] == pytest.approx([wa, wb])
    a, b, got = _weights(models["a"]), _weights(models["b"]), _weights(tmp_path / "out")
    for k in a:
        assert got[k].dtype == a[k].dtype and got[k].shape == a[k].shape
        torch.testing.assert_close(got[k], wa * a[k] + wb * b[k], rtol=0, atol=1e-7)
    assert 0 < summary["identical_tensors"] < summary["tensors"]  # norms start at 1 in both
    assert summary["parameters"] == sum(t.numel() for t in a.values())


def test_tensors_are_fused_in_chunks(models, tmp_path, monkeypatch):
    import posttrain.merge

    monkeypatch.setattr(posttrain.merge, "CHUNK_ELEMENTS", 100)  # every weight matrix spans many chunks
    fuse_checkpoints([models["a"], models["b"]], tmp_path / "avg", [0.25, 0.75])
    fuse_checkpoints([models["b"]] * 3, tmp_path / "self")
    a, b, avg, self_ = (_weights(p) for p in (models["a"], models["b"], tmp_path / "avg", tmp_path / "self"))
    for k in a:
        torch.testing.assert_close(avg[k], 0.25 * a[k] + 0.75 * b[k], rtol=0, atol=1e-7)
        assert torch.equal(self_[k], b[k])


def test_zero_weight_model_is_ignored_exactly(models, tmp_path):
    fuse_checkpoints([models["a"], models["b"]], tmp_path / "out", [1, 0])
    got, want = _weights(tmp_path / "out"), _weights(models["a"])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_mismatched_shape_names_the_tensor(models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(models["b"], bad)
    tensors = load_file(bad / SINGLE_FILE)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, str(bad / SINGLE_FILE), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"tensor '{name}' is F32\[63, 32\] there and F32\[64, 32\]") as e:
        fuse_checkpoints([models["a"], bad], tmp_path / "out")
    assert str(bad) in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_missing_tensor_is_named(models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(models["b"], bad)
    tensors = load_file(bad / SINGLE_FILE)
    del tensors["model.norm.weight"]
    save_file(tensors, str(bad / SINGLE_FILE), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks tensor 'model.norm.weight'"):
        fuse_checkpoints([models["a"], bad], tmp_path / "out")


def test_different_architecture_is_refused(models, tmp_path):
    with pytest.raises(ValueError, match="different architecture, config field 'intermediate_size' is 96 there and 64"):
        fuse_checkpoints([models["a"], models["wider"]], tmp_path / "out")


def test_different_tokenizer_is_refused(models, tmp_path):
    with pytest.raises(ValueError, match=r"different tokenizer \(tokenizer.json differs"):
        fuse_checkpoints([models["a"], models["other_tok"]], tmp_path / "out")


def test_runtime_config_and_tokenizer_settings_do_not_block_fusion(models, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(models["b"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(_name_or_path="somewhere/else", transformers_version="0.0.0", use_cache=False)
    (other / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((other / "tokenizer_config.json").read_text())
    tok["padding_side"] = "left"
    (other / "tokenizer_config.json").write_text(json.dumps(tok))
    assert fuse_checkpoints([models["a"], other], tmp_path / "out")["tensors"] > 0


def test_sharded_output_has_a_correct_index_and_loads(models, tmp_path):
    from transformers import AutoModelForCausalLM

    summary = fuse_checkpoints([models["a"], models["b"]], tmp_path / "out", shard_bytes=20_000)
    out = tmp_path / "out"
    shards = sorted(out.glob("*.safetensors"))
    assert summary["shards"] == len(shards) > 1 and not (out / SINGLE_FILE).exists()
    index = json.loads((out / INDEX_FILE).read_text())
    got = _weights(out)
    assert set(index["weight_map"]) == set(got) and set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == summary["bytes"] == sum(t.numel() * 4 for t in got.values())
    a, b = _weights(models["a"]), _weights(models["b"])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    state = model.state_dict()
    for k in a:
        torch.testing.assert_close(state[k], 0.5 * a[k] + 0.5 * b[k], rtol=0, atol=1e-7)
    # sharded inputs are read through their index: fusing the sharded model with itself is exact
    fuse_checkpoints([out, out], tmp_path / "again", shard_bytes=20_000)
    again = _weights(tmp_path / "again")
    assert all(torch.equal(again[k], got[k]) for k in got)


@pytest.mark.parametrize("weights, error", [
    ([-1, 2], "finite and >= 0"), ([1], "1 fusion weights for 2 models"), ([0, 0], "sum to 0"),
    ([math.nan, 1], "finite and >= 0"), ([math.inf, 1], "finite and >= 0"),
])
def test_bad_weights_are_refused(models, tmp_path, weights, error):
    with pytest.raises(ValueError, match=error):
        fuse_checkpoints([models["a"], models["b"]], tmp_path / "out", weights)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, n, want", [
    (None, 4, [0.25] * 4), ([1, 1, 2], 3, [0.25, 0.25, 0.5]), ([0.2, 0.8], 2, [0.2, 0.8]), ([5], 1, [1.0]),
])
def test_normalise_weights(weights, n, want):
    assert normalise_weights(weights, n) == pytest.approx(want)


def test_existing_output_is_not_overwritten(models, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        fuse_checkpoints([models["a"]], tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_lora_adapter_is_merged_then_fused(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(models["a"]))
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    want = {k: v.detach().clone() for k, v in lora.merge_and_unload().state_dict().items()}

    merge_adapter(models["a"], tmp_path / "adapter", tmp_path / "merged")
    merged = _weights(tmp_path / "merged")
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(merged[up], _weights(models["a"])[up])
    for k, v in merged.items():
        torch.testing.assert_close(v, want[k])

    with pytest.raises(ValueError, match="PEFT adapter: pass base_dir"):
        fuse_checkpoints([tmp_path / "adapter", models["b"]], tmp_path / "fused")
    fuse_checkpoints([tmp_path / "adapter", models["b"]], tmp_path / "fused", base_dir=models["a"])
    fused, b = _weights(tmp_path / "fused"), _weights(models["b"])
    for k in b:
        torch.testing.assert_close(fused[k], 0.5 * merged[k] + 0.5 * b[k], rtol=0, atol=1e-7)
    assert not list(tmp_path.glob(".fused.tmp-*"))
