"""HF ``generate`` engine: batched sampling with left padding (the faster choice for 135M on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from posttrain.engines.base import Completion, Messages, SamplingParams


class HFEngine:
    """Samples with ``transformers`` ``generate`` on the CPU (or the first GPU when present)."""

    name = "hf"

    def __init__(self, model_dir: Path, batch_size: int = 32):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        self._owned = True

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 32) -> "HFEngine":
        """An engine over a model already in memory (a policy during training); ``close`` keeps it.

        The tokenizer must pad on the left (the caller's copy is not changed).
        """
        import copy

        engine = cls.__new__(cls)
        engine.device = next(model.parameters()).device
        engine.tokenizer = copy.copy(tokenizer)
        engine.tokenizer.padding_side = "left"
        if engine.tokenizer.pad_token is None:
            engine.tokenizer.pad_token = engine.tokenizer.eos_token
        engine.model, engine.batch_size, engine._owned = model, batch_size, False
        return engine

    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt: returns ``[len(prompts)][n]``."""
        import torch

        texts = [self.tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in prompts]
        per_call = max(1, self.batch_size // params.n)
        out: list[list[Completion]] = []
        torch.manual_seed(params.seed)
        for start in range(0, len(texts), per_call):
            out.extend(self._generate_batch(texts[start : start + per_call], params))
        return out

    def _generate_batch(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        # temperature 0 is greedy decoding (as in vLLM): one sequence per prompt, repeated n times
        greedy = params.temperature <= 0
        sampling = (dict(do_sample=False, temperature=None, top_p=None, top_k=None) if greedy else
                    dict(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                         top_k=None if params.top_k < 0 else params.top_k))
        per_prompt = 1 if greedy else params.n
        with torch.inference_mode():
            seqs = self.model.generate(
                **enc, **sampling, max_new_tokens=params.max_new_tokens,
                num_return_sequences=per_prompt, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )  # [batch * per_prompt, prompt_len + new]
        new = seqs[:, enc["input_ids"].shape[1] :]
        results: list[list[Completion]] = []
        for i in range(len(texts)):
            group = []
            for row in new[i * per_prompt : (i + 1) * per_prompt].tolist():
                stop = self.tokenizer.eos_token_id in row
                length = row.index(self.tokenizer.eos_token_id) + 1 if stop else len(row)
                text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
                group.append(Completion(text=text, num_tokens=length, finish_reason="stop" if stop else "length"))
            results.append(group * (params.n // per_prompt))
        return results

    def close(self) -> None:
        if self._owned:
            del self.model
