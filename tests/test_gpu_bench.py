"""benchmarks/gpu: the FLOPs formula by hand, and the whole benchmark (and run.sh) on CPU in smoke mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", GPU / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# hidden 8, 2 layers, 2 heads (head_dim 4), 1 KV head, intermediate 16, vocab 32.
HAND = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=16, vocab_size=32, tie_word_embeddings=True)
# Per layer: q 8*8+8 = 72, k 8*4+4 = 36, v 36, o 8*8 = 64 -> 208; MLP 3*8*16 = 384; 2 norms 16.
# 2 * (208 + 384 + 16) + final norm 8 = 1224.
HAND_N = 1224


@pytest.mark.parametrize("shape, n_non_emb", [
    (HAND, HAND_N),
    # Qwen2-0.5B: 494,032,768 parameters in all, 151936 * 896 = 136,134,656 of them the tied embedding.
    (dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
          intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True), 494_032_768 - 136_134_656),
])
def test_non_embedding_params(shape, n_non_emb):
    assert _bench().non_embedding_params(shape) == n_non_emb


@pytest.mark.parametrize("seq, tokens, expected", [
    # 6 * 1224 * 8 = 58752; 12 * 2 layers * 8 hidden * 4 seq * 8 tokens = 6144
    (4, 8, 58_752 + 6_144),
    # 6 * 1224 * 16 = 117504; 12 * 2 * 8 * 8 * 16 = 24576
    (8, 16, 117_504 + 24_576),
])
def test_train_flops_by_hand(seq, tokens, expected):
    bench = _bench()
    assert bench.train_flops(HAND, seq, tokens) == expected
    assert bench.lm_head_flops(HAND, tokens) == 6 * 32 * 8 * tokens


def test_param_count_matches_a_real_qwen2():
    import torch

    bench = _bench()
    model = bench.build_model(HAND, "cpu", torch.float32)
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert n == HAND_N


def test_table_of_an_empty_result_says_so():
    text = _bench().table({})
    assert "SFT tokens/s" in text and "errors" in text


def _env() -> dict:
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _check_smoke_json(path: Path) -> dict:
    result = json.loads(path.read_text())
    assert result["errors"] == {}
    sft, grpo = result["sft"], result["grpo"]
    assert sft["tokens_per_s"] > 0 and sft["timed_steps"] == 2
    assert isinstance(sft["mfu"], float) and sft["mfu"] > 0
    assert sft["loss_finite"] and sft["params_non_embedding"] == sft["params_non_embedding_counted"]
    assert grpo["step_time_s_median"] > 0 and grpo["timed_steps"] == 2
    assert grpo["generate_s_median"] > 0 and grpo["train_s_median"] > 0
    assert grpo["reward_std_mean"] > 0  # the synthetic reward varies inside a group
    assert result["versions"]["trl"] and result["device"]["name"]
    return result


@pytest.mark.slow
def test_cpu_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run([sys.executable, str(GPU / "bench.py"), "--cpu-smoke", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_smoke_json(out)
    assert "SFT tokens/s" in proc.stdout


@pytest.mark.slow
def test_run_sh_cpu_smoke(tmp_path):
    """The device command end to end on CPU: both sections, the summary, the files under $OUT."""
    env = dict(_env(), OUT=str(tmp_path), PYTHON=sys.executable, BENCH_TOTAL_S="200")
    proc = subprocess.run(["bash", str(GPU / "run.sh"), "--cpu-smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=260)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_smoke_json(tmp_path / "gpu_bench.json")
    assert (tmp_path / "gpu_bench.log").stat().st_size > 0 and (tmp_path / "env.txt").is_file()
    assert "== summary" in proc.stdout
