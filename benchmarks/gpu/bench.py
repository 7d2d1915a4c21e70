"""GPU benchmark: SFT throughput and MFU, and GRPO step time, on a Qwen2-0.5B-shaped model.

Made for a short lease of one NVIDIA H200 (benchmarks/gpu/README.md; ``run.sh`` is the command
to give the device tool). Self-contained: imports torch, transformers, TRL and datasets only, never
``posttrain`` (whose import chain needs pydantic, mlflow and boto3, which the device lacks).

(a) SFT: a randomly initialised Qwen2 of Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads,
    2 KV heads, intermediate 4864, vocab 151936, tied embeddings), weights in bf16, torch AdamW
    (fused on CUDA), SDPA attention, full-length rows of random tokens; ``--sft-warmup`` steps,
    then ``--sft-steps`` timed steps (synchronised per step, median reported).
(b) GRPO: TRL's ``GRPOTrainer`` on the same shape (``--grpo-layers`` for a smaller one), HF
    generation, group size 8, 256-token completions, fp32 master weights with bf16 autocast and
    TRL's default gradient checkpointing (what the pipeline's ``grpo_config`` sets on a GPU), a
    synthetic reward that varies within a group. One warm-up step, then timed steps; each step
    is split into generation (``_generate``), the rest of the rollout (rewards, advantages) and
    training (loss, backward, optimizer), timed here because TRL sends its own profiling timings
    only to wandb/mlflow/trackio, not to ``log_history``.

Writes one JSON (``--out``, default ``$OUT/gpu_bench.json``) with all figures, the versions and
the device name, merging into an existing file so that ``--only sft`` and ``--only grpo`` runs in
separate processes (run.sh's timeout guards) fill one file; a run cut short by SIGTERM still
writes what it measured. ``--cpu-smoke``: a tiny fp32 shape on CPU through every code path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

H200_PEAK_BF16_FLOPS = 989e12  # dense bf16 tensor-core FLOP/s, H200 SXM datasheet (sparse: 1979e12)

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True)

EOS, PAD = "<eos>", "<pad>"


class Terminated(Exception):
    """Raised from the SIGTERM handler (``timeout`` in run.sh) so partial figures are written."""


# ---------------------------------------------------------------- formulas


def non_embedding_params(shape: dict) -> int:
    """Parameters of a Qwen2 decoder outside the (tied) token embedding.

    Per layer: q/k/v projections with bias, o projection without, SwiGLU MLP (gate, up, down),
    two RMSNorm weights; plus the final RMSNorm. ``head_dim`` defaults to hidden / heads.
    """
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    hd = shape.get("head_dim") or h // heads
    attn = (h * heads * hd + heads * hd) + 2 * (h * kv * hd + kv * hd) + heads * hd * h
    mlp = 3 * h * inter
    return shape["num_hidden_layers"] * (attn + mlp + 2 * h) + h


def train_flops(shape: dict, seq_len: int, tokens: int) -> int:
    """Model FLOPs of training (forward + backward) on ``tokens`` tokens in rows of ``seq_len``.

    ``6 * N * tokens + 12 * layers * hidden * seq_len * tokens`` (PaLM, Chowdhery et al. 2022,
    appendix B): N = non-embedding parameters (``non_embedding_params``); 6 = 2 FLOPs per
    multiply-add times 3 for forward + backward; the second term is the attention score and
    value matmuls, counted without the causal mask's saving. The LM head (vocab x hidden matmul,
    tied to the embedding here) is not counted; ``lm_head_flops`` gives it separately.
    Recomputation (gradient checkpointing) is not model FLOPs and is never counted.
    """
    n = non_embedding_params(shape)
    return 6 * n * tokens + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq_len * tokens


def lm_head_flops(shape: dict, tokens: int) -> int:
    """Training FLOPs of the output projection: ``6 * vocab * hidden * tokens``."""
    return 6 * shape["vocab_size"] * shape["hidden_size"] * tokens


# ---------------------------------------------------------------- helpers


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _now(device: str) -> float:
    _sync(device)
    return time.perf_counter()


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


def _device_info(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"name": f"cpu ({platform.processor() or platform.machine()})", "count": 0,
                "cpu_threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count}


def _peak_memory(device: str) -> dict:
    import resource

    import torch

    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if device == "cuda":
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def _reset_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_model(shape: dict, device: str, dtype):
    """A randomly initialised Qwen2ForCausalLM of ``shape``, created directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(**shape, max_position_embeddings=32768, bos_token_id=None, eos_token_id=0, pad_token_id=1)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` ids: ``<eos>``, ``<pad>``, then ``w2`` .. ``wN``.

    Made in-process (no hub access); every id the model can sample decodes to a word, so the
    reward sees real text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, PAD: 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left")


def parity_reward(completions, **kwargs) -> list[float]:
    """Fraction of completion words with an even id: random rollouts give rewards that vary in a group."""
    out = []
    for text in completions:
        ids = [int(w[1:]) for w in text.split() if w[:1] == "w" and w[1:].isdigit()]
        out.append(sum(i % 2 == 0 for i in ids) / len(ids) if ids else 0.0)
    return out


# ---------------------------------------------------------------- (a) SFT


def bench_sft(a, device: str, record: dict, deadline: float) -> None:
    """Fills ``record`` as it goes (a SIGTERM mid-way leaves the figures so far); timed steps stop at ``deadline``."""
    import torch

    dtype = torch.float32 if a.cpu_smoke else torch.bfloat16
    _reset_memory(device)
    model = build_model(a.shape, device, dtype)
    model.train()
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    tokens = a.sft_batch * a.seq_len
    flops_step = train_flops(a.shape, a.seq_len, tokens)
    record.update(shape=a.shape, dtype=str(dtype).removeprefix("torch."), batch=a.sft_batch, seq_len=a.seq_len,
                  tokens_per_step=tokens, attn_implementation="sdpa", optimizer="torch.optim.AdamW",
                  params_total=n_total, params_non_embedding=non_embedding_params(a.shape),
                  params_non_embedding_counted=n_total - n_embed, flops_per_step=flops_step,
                  flops_formula="6*N_non_emb*tokens + 12*layers*hidden*seq*tokens",
                  peak_flops=a.peak_flops, warmup_steps=a.sft_warmup, step_times_s=[])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=device == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    # A few distinct batches in rotation: never time on one buffer or on zeros.
    batches = [torch.randint(2, a.shape["vocab_size"], (a.sft_batch, a.seq_len), device=device, generator=gen)
               for _ in range(4)]
    losses = []
    for i in range(a.sft_warmup + a.sft_steps):
        ids = batches[i % len(batches)]
        t0 = _now(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = _now(device) - t0
        losses.append(loss.item())
        if i >= a.sft_warmup:
            record["step_times_s"].append(round(dt, 5))
            _sft_figures(a, record, tokens, flops_step)
            if time.monotonic() > deadline:
                record["stopped_early"] = "deadline"
                break
    record["losses"] = [round(x, 4) for x in losses]
    record["loss_finite"] = all(math.isfinite(x) for x in losses)
    record.update(_peak_memory(device))
    del model, opt, batches


def _sft_figures(a, record: dict, tokens: int, flops_step: int) -> None:
    med = _median(record["step_times_s"])
    record["timed_steps"] = len(record["step_times_s"])
    record["step_time_s_median"] = med
    record["tokens_per_s"] = tokens / med
    record["model_flops_per_s"] = flops_step / med
    record["mfu"] = flops_step / med / a.peak_flops
    record["mfu_incl_lm_head"] = (flops_step + lm_head_flops(a.shape, tokens)) / med / a.peak_flops


# ---------------------------------------------------------------- (b) GRPO


def bench_grpo(a, device: str, record: dict, deadline: float) -> None:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig

    cpu = device != "cuda"
    shape = dict(a.shape, num_hidden_layers=a.grpo_layers or a.shape["num_hidden_layers"])
    _reset_memory(device)
    model = build_model(shape, device, torch.float32)  # fp32 master weights, as the pipeline loads them
    tokenizer = build_tokenizer(shape["vocab_size"])
    completions = a.grpo_prompts * a.group_size
    steps = a.grpo_warmup + a.grpo_steps
    rng = torch.Generator().manual_seed(0)
    prompts = [" ".join(f"w{i}" for i in torch.randint(2, shape["vocab_size"], (a.prompt_len,), generator=rng).tolist())
               for _ in range(a.grpo_prompts * steps)]
    record.update(trainer="trl.GRPOTrainer", shape=shape, group_size=a.group_size, prompts_per_step=a.grpo_prompts,
                  completions_per_step=completions, prompt_len=a.prompt_len, completion_len=a.completion_len,
                  generation="transformers.generate (HF)", precision="fp32" if cpu else "fp32 weights, bf16 autocast",
                  gradient_checkpointing=not a.grpo_no_grad_ckpt, warmup_steps=a.grpo_warmup,
                  step_times_s=[], generate_s=[], rollout_s=[])
    timings = {"generate": [], "rollout": [], "step": []}
    Timed, StepTimer = _timed_classes(device, timings, record, a, deadline)

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=completions, num_generations=a.group_size,
            max_completion_length=a.completion_len, max_steps=steps, num_iterations=1, beta=0.0,
            learning_rate=1e-6, temperature=1.0, top_p=1.0, logging_steps=1, save_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0,
            use_cpu=cpu, bf16=not cpu, gradient_checkpointing=not a.grpo_no_grad_ckpt)
        trainer = Timed(model=model, reward_funcs=[parity_reward], args=args, processing_class=tokenizer,
                        train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[StepTimer()])
        trainer.remove_callback(PrinterCallback)  # per-step log dicts would crowd the device tool's output tail
        trainer.train()
    logs = [h for h in trainer.state.log_history if "reward_std" in h]
    record["reward_std_mean"] = statistics.fmean(h["reward_std"] for h in logs) if logs else None
    record["frac_reward_zero_std"] = statistics.fmean(h["frac_reward_zero_std"] for h in logs) if logs else None
    record["trl_step_time_s"] = [round(h["step_time"], 4) for h in trainer.state.log_history if "step_time" in h]
    record["mean_completion_len"] = (statistics.fmean(h["completions/mean_length"] for h in logs) if logs else None)
    record.update(_peak_memory(device))


def _timed_classes(device: str, timings: dict, record: dict, a, deadline: float):
    """A GRPOTrainer subclass timing ``_generate`` and the whole rollout, and a callback timing steps."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t0 = _now(device)
            out = super()._generate(prompts)
            timings["generate"].append(_now(device) - t0)
            return out

        def _generate_and_score_completions(self, inputs):
            t0 = _now(device)
            out = super()._generate_and_score_completions(inputs)
            timings["rollout"].append(_now(device) - t0)
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = _now(device)

        def on_step_end(self, args, state, control, **kw):
            timings["step"].append(_now(device) - self.t0)
            _grpo_figures(record, timings, a)
            if time.monotonic() > deadline:  # stop cleanly inside run.sh's timeout
                record["stopped_early"] = "deadline"
                control.should_training_stop = True

    return Timed, StepTimer


def _grpo_figures(record: dict, timings: dict, a) -> None:
    w = a.grpo_warmup
    step, gen, roll = timings["step"][w:], timings["generate"][w:], timings["rollout"][w:]
    record["step_times_s"] = [round(x, 4) for x in timings["step"]]
    record["generate_s"] = [round(x, 4) for x in timings["generate"]]
    record["rollout_s"] = [round(x, 4) for x in timings["rollout"]]
    record["timed_steps"] = len(step)
    if not step:
        return
    n = min(len(step), len(gen), len(roll))
    med_step, med_gen, med_roll = _median(step), _median(gen[:n]), _median(roll[:n])
    record["step_time_s_median"] = med_step
    record["generate_s_median"] = med_gen
    record["rollout_s_median"] = med_roll
    record["scoring_s_median"] = med_roll - med_gen if n else None
    record["train_s_median"] = _median([s - r for s, r in zip(step[:n], roll[:n])]) if n else None
    record["generation_share"] = med_gen / med_step if n else None
    tokens = record["completions_per_step"] * a.completion_len
    record["generated_tokens_per_s_upper"] = tokens / med_gen if n else None  # if no completion stops early


# ---------------------------------------------------------------- output


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)


def _fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _rows(result: dict) -> list[tuple[str, str]]:
    dev = result.get("device", {})
    v = result.get("versions", {})
    s, g = result.get("sft", {}), result.get("grpo", {})
    ss, gs = s.get("shape", {}), g.get("shape", {})
    return [
        ("device", f"{dev.get('name', '?')}" + (f", {dev['memory_gib']} GiB" if dev.get("memory_gib") else "")),
        ("torch / CUDA / transformers / trl",
         " / ".join(str(v.get(k)) for k in ("torch", "cuda", "transformers", "trl"))),
        ("SFT setup", f"L{ss.get('num_hidden_layers')} h{ss.get('hidden_size')} V{ss.get('vocab_size')}, "
                      f"batch {s.get('batch')} x seq {s.get('seq_len')}, {s.get('dtype')}, AdamW" if s else "-"),
        ("SFT step (median, s)", _fmt(s.get("step_time_s_median"), ".4f")),
        ("SFT tokens/s", _fmt(s.get("tokens_per_s"), ",.0f")),
        ("SFT MFU (6N+attn; with LM head)", f"{_fmt(s.get('mfu'), '.1%')}; {_fmt(s.get('mfu_incl_lm_head'), '.1%')}"),
        ("SFT peak GPU memory (GiB)", _fmt(s.get("peak_gpu_allocated_gib"), ".2f")),
        ("GRPO setup", f"L{gs.get('num_hidden_layers')}, {g.get('prompts_per_step')} prompts x G{g.get('group_size')}, "
                       f"{g.get('prompt_len')}+{g.get('completion_len')} tokens, {g.get('precision')}" if g else "-"),
        ("GRPO step (median, s)", _fmt(g.get("step_time_s_median"), ".3f")),
        ("GRPO generate / score / train (s)", f"{_fmt(g.get('generate_s_median'), '.3f')} / "
                                              f"{_fmt(g.get('scoring_s_median'), '.3f')} / "
                                              f"{_fmt(g.get('train_s_median'), '.3f')}"),
        ("GRPO peak GPU memory (GiB)", _fmt(g.get("peak_gpu_allocated_gib"), ".2f")),
        ("errors", "; ".join(f"{k}: {e}" for k, e in result.get("errors", {}).items()) or "none"),
    ]


def table(result: dict, markdown: bool = False) -> str:
    """The headline figures: plain text, or a markdown table for docs/performance.md."""
    rows = _rows(result)
    if markdown:
        return "\n".join(["| figure | value |", "|---|---|", *(f"| {k} | {val} |" for k, val in rows)])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_bench.json)")
    ap.add_argument("--only", choices=["sft", "grpo", "all"], default="all")
    ap.add_argument("--summary", action="store_true", help="print the table of an existing --out and exit")
    ap.add_argument("--markdown", action="store_true", help="with --summary: a markdown table")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny fp32 shape on CPU through every code path")
    ap.add_argument("--budget-s", type=float, default=280.0, help="stop timed steps after this many seconds from start")
    ap.add_argument("--peak-flops", type=float, default=H200_PEAK_BF16_FLOPS, help="for MFU (FLOP/s)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-warmup", type=int, default=3)
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--grpo-layers", type=int, default=None, help="a shallower model for GRPO (default: same)")
    ap.add_argument("--grpo-prompts", type=int, default=2, help="prompts per step (each gets group-size completions)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--completion-len", type=int, default=256)
    ap.add_argument("--grpo-warmup", type=int, default=1)
    ap.add_argument("--grpo-steps", type=int, default=4)
    ap.add_argument("--grpo-no-grad-ckpt", action="store_true", help="turn off TRL's default gradient checkpointing")
    a = ap.parse_args(argv)
    a.shape = dict(QWEN2_05B)
    if a.cpu_smoke:
        a.shape = dict(TINY)
        a.seq_len, a.sft_batch, a.sft_warmup, a.sft_steps = 64, 2, 1, 2
        a.group_size, a.grpo_prompts, a.prompt_len, a.completion_len = 4, 1, 8, 16
        a.grpo_warmup, a.grpo_steps = 1, 2
    if a.out is None:
        a.out = Path(os.environ.get("OUT") or ".cache/gpu-bench") / "gpu_bench.json"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.summary:
        print(table(_load(a.out), markdown=a.markdown))
        return 0
    start = time.monotonic()

    def _term(signum, frame):
        raise Terminated(f"signal {signum} after {time.monotonic() - start:.0f} s")

    signal.signal(signal.SIGTERM, _term)
    import torch

    device = "cuda" if torch.cuda.is_available() and not a.cpu_smoke else "cpu"
    result = _load(a.out)
    result.update(schema=1, versions=_versions(), device=_device_info(device), cpu_smoke=a.cpu_smoke,
                  argv=sys.argv[1:], peak_flops=a.peak_flops)
    errors = result.setdefault("errors", {})
    sections = ["sft", "grpo"] if a.only == "all" else [a.only]
    for name in sections:
        record = result[name] = {}
        errors.pop(name, None)
        t0 = time.monotonic()
        try:
            if name == "sft":
                bench_sft(a, device, record, deadline=start + a.budget_s)
            else:
                bench_grpo(a, device, record, deadline=start + a.budget_s)
        except Exception as e:  # keep what was measured, say what broke
            errors[name] = f"{type(e).__name__}: {e}"[:500]
            print(f"[bench] {name} failed: {errors[name]}", file=sys.stderr, flush=True)
        record["wall_s"] = round(time.monotonic() - t0, 2)
        _write(a.out, result)
        if name in errors and errors[name].startswith("Terminated"):
            break
    print(table(result), flush=True)
    print(f"[bench] wrote {a.out}", flush=True)
    return 1 if any(n in errors for n in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
