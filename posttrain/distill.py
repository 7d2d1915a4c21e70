"""Offline self-distillation (3B §2.3; design.md §1.3).

1. Sample each RL specialist (math, code, STEM checkpoints) ``samples_per_prompt`` times on its
   domain's prompts; keep verified traces only, one copy of each distinct text per prompt.
2. Score each kept trace by the student's mean token negative log-likelihood ("learning
   potential": what the student has yet to learn) over the completion tokens given the prompt.
3. Per domain: drop traces under ``min_tokens``, drop NLL outliers (|z| > ``outlier_z`` within
   the domain), split the rest into length buckets at quantile edges, and keep the NLL band from
   the ``nll_low_quantile`` to the ``nll_high_quantile`` of each bucket (middle-to-high NLL).
4. SFT the student (the model entering the stage) on the union, its checkpoints mirrored to the
   store every ``save_steps`` so a crashed stage resumes on the same traces. When nothing is
   kept the student passes through unchanged, and the report says so.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from posttrain.config import DistillSelection, DistillStage
from posttrain.context import StageContext
from posttrain.engines import SamplingParams, open_engine
from posttrain.sinks import Sinks
from posttrain.records import Record
from posttrain.sft import train_sft
from posttrain.verifiers.base import verify_groups

log = logging.getLogger(__name__)

REPORT = "distill_report.json"
TRACES = "traces.jsonl"
SELECTION = "distill_selection.json"  # the kept traces, beside the checkpoints while the stage runs


@dataclass(frozen=True)
class Candidate:
    """One verified, distinct trace: its record, domain, completion, length (tokens) and NLL (nats/token)."""

    record: Record
    completion: str
    tokens: int = 0
    nll: float = 0.0

    @property
    def domain(self) -> str:
        return self.record.domain


def collect_verified(records: Sequence[Record], groups: Sequence[Sequence]) -> tuple[list[Candidate], dict]:
    """Verified traces with exact duplicates (same prompt, same stripped text) removed.

    ``groups`` is ``[len(records)][k]`` engine completions. Returns ``(candidates, counts)`` with
    counts ``{domain: {prompts, samples, verified, duplicates}}``.
    """
    out, seen = [], set()
    counts: dict[str, dict] = {}
    for record, group, verdicts in zip(records, groups, verify_groups(records, groups)):
        row = counts.setdefault(record.domain, {"prompts": 0, "samples": 0, "verified": 0, "duplicates": 0})
        row["prompts"] += 1
        for c, verdict in zip(group, verdicts):
            row["samples"] += 1
            if not verdict.passed:
                continue
            row["verified"] += 1
            if (record.id, c.text.strip()) in seen:
                row["duplicates"] += 1
                continue
            seen.add((record.id, c.text.strip()))
            out.append(Candidate(record, c.text))
    return out, counts


def mean_nll(model_dir: Path, pairs: Sequence[tuple[list[dict], str]], batch_size: int = 8,
             max_length: int | None = None) -> list[tuple[int, float]]:
    """The student's mean token negative log-likelihood of each completion given its prompt.

    Each ``(prompt messages, completion)`` is rendered with the model's chat template exactly as
    SFT renders it (prompt with the generation prompt, then the assistant turn); the loss runs
    over the assistant tokens only: ``NLL = -1/T sum_t log p(y_t | x, y_<t)`` in nats per token.
    Batched with right padding; ``max_length`` truncates (tokens).

    Returns:
        ``[(completion tokens T, NLL)]`` in input order; T = 0 gives NLL ``nan``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    encoded = []
    for messages, completion in pairs:
        prompt_ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        full_ids = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                                 tokenize=True)
        prompt_ids, full_ids = list(_ids(prompt_ids)), list(_ids(full_ids))
        if max_length:
            full_ids = full_ids[:max_length]
        encoded.append((full_ids, len(prompt_ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[int, float]] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            target = torch.zeros((len(chunk), width), dtype=torch.bool)  # tokens whose NLL counts
            for i, (ids, n_prompt) in enumerate(chunk):
                input_ids[i, :len(ids)] = torch.tensor(ids)
                attention[i, :len(ids)] = 1
                target[i, n_prompt:len(ids)] = True
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            mask = target[:, 1:]
            for i in range(len(chunk)):
                t = int(mask[i].sum())
                out.append((t, float(nll[i][mask[i]].mean()) if t else math.nan))
    return out


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending list."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def select_band(candidates: Sequence[Candidate], cfg: DistillSelection) -> tuple[list[Candidate], dict]:
    """Keep the middle-to-high NLL band per length bucket and domain (3B §2.3). Pure: no I/O.

    Per domain, in order: (1) drop traces with ``tokens < min_tokens``; (2) drop NLL outliers,
    ``|nll - mean| > outlier_z * std`` over the domain's remaining traces (population std; none
    when std is 0 or fewer than 3 traces); (3) bucket by length with edges at the
    ``i / length_buckets`` quantiles of the remaining lengths (a trace goes to the first bucket
    whose upper edge is >= its length); (4) in each bucket keep traces with
    ``q_low <= nll <= q_high``, the ``nll_low_quantile`` and ``nll_high_quantile`` of that
    bucket's NLLs.

    Returns:
        ``(kept, report)``: kept candidates in input order; report ``{domain: {"candidates",
        "too_short", "outliers", "kept", "edges": [token edges], "buckets": [{"tokens": [lo, hi],
        "traces", "below_band", "above_band", "kept", "nll_band": [q_low, q_high]}]}}``.
    """
    kept_ids: set[int] = set()
    report: dict[str, dict] = {}
    for domain in sorted({c.domain for c in candidates}):
        members = [i for i, c in enumerate(candidates) if c.domain == domain]
        row = {"candidates": len(members), "too_short": 0, "outliers": 0, "kept": 0, "edges": [], "buckets": []}
        report[domain] = row
        long_enough = [i for i in members if candidates[i].tokens >= cfg.min_tokens]
        row["too_short"] = len(members) - len(long_enough)
        nlls = [candidates[i].nll for i in long_enough]
        pool = long_enough
        if len(nlls) >= 3:
            mean = sum(nlls) / len(nlls)
            std = math.sqrt(sum((x - mean) ** 2 for x in nlls) / len(nlls))
            if std > 0:
                pool = [i for i in long_enough if abs(candidates[i].nll - mean) <= cfg.outlier_z * std]
        row["outliers"] = len(long_enough) - len(pool)
        if not pool:
            continue
        lengths = sorted(candidates[i].tokens for i in pool)
        edges = [_quantile(lengths, b / cfg.length_buckets) for b in range(cfg.length_buckets + 1)]
        row["edges"] = edges
        buckets: list[list[int]] = [[] for _ in range(cfg.length_buckets)]
        for i in pool:
            b = next(b for b in range(cfg.length_buckets) if candidates[i].tokens <= edges[b + 1])
            buckets[b].append(i)
        for b, ids in enumerate(buckets):
            values = sorted(candidates[i].nll for i in ids)
            low, high = _quantile(values, cfg.nll_low_quantile), _quantile(values, cfg.nll_high_quantile)
            keep = [i for i in ids if low - 1e-12 <= candidates[i].nll <= high + 1e-12]
            kept_ids.update(keep)
            row["buckets"].append({"tokens": [edges[b], edges[b + 1]], "traces": len(ids),
                                   "below_band": sum(candidates[i].nll < low - 1e-12 for i in ids),
                                   "above_band": sum(candidates[i].nll > high + 1e-12 for i in ids),
                                   "kept": len(keep), "nll_band": [low, high]})
            row["kept"] += len(keep)
    return [c for i, c in enumerate(candidates) if i in kept_ids], report


def sample_specialists(records: Sequence[Record], specialists: dict[str, Path], cfg: DistillStage,
                       seed: int) -> list[list]:
    """``[len(records)][samples_per_prompt]`` completions, each record sampled by its domain's specialist.

    Raises:
        ValueError: naming a record's domain that no specialist covers.
    """
    by_domain: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.domain not in specialists:
            raise ValueError(f"distill: record {r.id} has domain {r.domain!r} but specialists cover only "
                             f"{sorted(specialists)} (recipe field distill.specialists)")
        by_domain.setdefault(r.domain, []).append(i)
    groups: list[list] = [[] for _ in records]
    params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                            max_new_tokens=cfg.sampling.max_new_tokens, seed=seed)
    for domain, ids in by_domain.items():
        engine = open_engine(cfg.sampling.engine, specialists[domain], batch_size=cfg.sampling.batch_size)
        try:
            for i, group in zip(ids, engine.generate([records[i].chat() for i in ids], params)):
                groups[i] = group
        finally:
            engine.close()
    return groups


def report_table(counts: dict, selection: dict) -> list[dict]:
    """One row per domain and length bucket for a Prefect table: sampled, verified, kept, dropped."""
    rows = []
    for domain in sorted(set(counts) | set(selection)):
        c, s = counts.get(domain, {}), selection.get(domain, {})
        base = {"domain": domain, "prompts": c.get("prompts", 0), "samples": c.get("samples", 0),
                "verified": c.get("verified", 0), "duplicates": c.get("duplicates", 0),
                "too_short": s.get("too_short", 0), "outliers": s.get("outliers", 0)}
        buckets = s.get("buckets") or [{}]
        for b, bucket in enumerate(buckets):
            tokens = bucket.get("tokens")
            rows.append({**base, "bucket": f"{b}: {tokens[0]:.0f}-{tokens[1]:.0f} tokens" if tokens else "-",
                         "traces": bucket.get("traces", 0), "below_band": bucket.get("below_band", 0),
                         "above_band": bucket.get("above_band", 0), "kept": bucket.get("kept", 0)})
    return rows


def select_traces(ctx: StageContext, cfg: DistillStage, records: list[Record]) -> tuple[list[Candidate], dict]:
    """Sample the specialists, verify, score and select: ``(kept candidates, {"verified", "sampling", "bands"})``.

    A resumed trainer's data position indexes the traces it trained on, so they are kept beside
    the stage's checkpoints in the store (``distill_selection.json``) before training, and a retry
    at the same stage key reuses them instead of sampling again.
    """
    remote = ctx.checkpoints
    saved = remote.get_json(SELECTION) if remote is not None else None
    if saved is not None:
        by_id = {r.id: r for r in records}
        kept = [Candidate(by_id[t["record_id"]], t["completion"], t["tokens"], t["nll"]) for t in saved["kept"]]
        log.info("%s: reusing an earlier attempt's %d selected traces", ctx.stage, len(kept))
        return kept, saved["info"]
    specialists = {domain: ctx.inputs.get(stage, ctx.model_in) for domain, stage in cfg.specialists.items()}
    groups = sample_specialists(records, specialists, cfg, ctx.seed)
    candidates, counts = collect_verified(records, groups)
    scores = mean_nll(ctx.model_in, [(c.record.chat(), c.completion) for c in candidates],
                      cfg.selection.batch_size, cfg.max_length)
    candidates = [Candidate(c.record, c.completion, t, nll) for c, (t, nll) in zip(candidates, scores)]
    kept, selection = select_band(candidates, cfg.selection)
    info = {"verified": len(candidates), "sampling": counts, "bands": selection}
    if remote is not None:
        remote.put_json(SELECTION, {"info": info, "kept": [{"record_id": c.record.id, "completion": c.completion,
                                                            "tokens": c.tokens, "nll": c.nll} for c in kept]})
    return kept, info


def train_student(ctx: StageContext, cfg: DistillStage, kept: list[Candidate]) -> dict:
    """SFT the student on the kept traces, from the newest checkpoint mirrored for this stage key if
    any; checkpoints every ``cfg.save_steps`` steps. Returns :func:`train_sft`'s summary plus
    ``resumed_from_step`` (0 for a fresh start)."""
    remote = ctx.checkpoints
    resume = remote.latest(ctx.out_dir / "resume") if remote is not None else None
    if resume is not None:
        log.info("%s: resuming from checkpoint %s", ctx.stage, resume[1].name)
    sinks = Sinks(ctx)
    summary = train_sft([c.record.sft_pair(c.completion) for c in kept], ctx.model_in, ctx.model_out, cfg.train,
                        cfg.max_length, False, ctx.seed, sinks.callbacks(), save_steps=cfg.save_steps,
                        upload=sinks.upload(), resume_from=resume[1] if resume else None, launch=ctx.recipe.launch)
    state = json.loads((resume[1] / "trainer_state.json").read_text()) if resume else {"global_step": 0}
    summary["resumed_from_step"] = state["global_step"]
    shutil.rmtree(ctx.out_dir / "resume", ignore_errors=True)
    return summary


def run_distill_stage(ctx: StageContext, cfg: DistillStage) -> dict:
    """Sample the RL specialists, keep verified traces, select the NLL band, SFT the student.

    ``ctx.inputs`` holds ``model`` (the student: the model entering the stage) and one folder per
    specialist stage named in ``cfg.specialists`` (the pipeline always fetches them; a direct call
    without one samples that domain from the student). Writes ``distill_report.json`` and
    ``traces.jsonl`` (the kept traces with tokens, NLL and specialist). When nothing is kept the
    student passes through unchanged: a result, not an error. A retried stage resumes training
    from its mirrored checkpoint on the traces its first attempt selected (:func:`select_traces`).
    """
    records = ctx.load(cfg.data)
    kept, info = select_traces(ctx, cfg, records)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.out_dir / TRACES).open("w") as f:
        for c in kept:
            f.write(json.dumps({"record_id": c.record.id, "domain": c.domain, "specialist": cfg.specialists[c.domain],
                                "tokens": c.tokens, "nll": c.nll, "completion": c.completion}) + "\n")
    summary = {"prompts": len(records), "verified": info["verified"], "kept": len(kept),
               "distill_table": report_table(info["sampling"], info["bands"])}
    if kept:
        summary.update(train_student(ctx, cfg, kept))
        summary["note"] = f"SFT on {len(kept)} of {info['verified']} verified traces"
    else:
        shutil.copytree(ctx.model_in, ctx.model_out)
        why = "no sampled trace verified" if not info["verified"] else "the selection kept no trace"
        summary.update(note=f"{why}: the student passes through unchanged", param_delta_l2=0.0, steps=0)
    report = {"note": summary["note"], "specialists": cfg.specialists, "selection": cfg.selection.model_dump(),
              "sampling": info["sampling"], "bands": info["bands"]}
    (ctx.out_dir / REPORT).write_text(json.dumps(report, indent=2))
    log.info("distill: %s", summary["note"])
    return summary
