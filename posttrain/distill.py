"""Offline self-distillation (3B §2.3): sample the RL policy, keep verified traces, SFT the student.

Ranking by the student's NLL within length buckets arrives with the distillation issue; here
every verified, distinct trace is kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict

from posttrain.config import DistillStage
from posttrain.context import StageContext
from posttrain.data import load_mixture
from posttrain.engines import SamplingParams, open_engine
from posttrain.sft import train_sft
from posttrain.verifiers.base import verify_groups

log = logging.getLogger(__name__)


def collect_verified(records, groups) -> tuple[list[dict], dict]:
    """Verified, deduplicated (prompt, completion) pairs and per-domain counts.

    ``groups`` is ``[len(records)][k]`` completions. Returns ``(pairs, report)`` with report
    ``{domain: {prompts, samples, verified, kept}}``.
    """
    pairs, seen = [], set()
    report: dict[str, dict] = defaultdict(lambda: {"prompts": 0, "samples": 0, "verified": 0, "kept": 0})
    for record, group, verdicts in zip(records, groups, verify_groups(records, groups)):
        row = report[record.domain]
        row["prompts"] += 1
        for c, verdict in zip(group, verdicts):
            row["samples"] += 1
            if not verdict.passed:
                continue
            row["verified"] += 1
            if (record.id, c.text.strip()) in seen:
                continue
            seen.add((record.id, c.text.strip()))
            row["kept"] += 1
            pairs.append(record.sft_pair(c.text))
    return pairs, dict(report)


def run_distill_stage(ctx: StageContext, cfg: DistillStage) -> dict:
    """Sample the upstream policy on the stage's prompts, keep verified traces, SFT on them.

    When nothing verifies, the report says so and the model passes through unchanged: a result,
    not an error. Writes ``distill_report.json`` and ``traces.jsonl``.
    """
    records = load_mixture(cfg.data, ctx.data_root, seed=ctx.seed)
    engine = open_engine(cfg.sampling.engine, ctx.model_in, batch_size=cfg.sampling.batch_size)
    try:
        params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.sampling.temperature,
                                top_p=cfg.sampling.top_p, max_new_tokens=cfg.sampling.max_new_tokens, seed=ctx.seed)
        groups = engine.generate([r.chat() for r in records], params)
    finally:
        engine.close()
    pairs, report = collect_verified(records, groups)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.out_dir / "traces.jsonl").open("w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    summary = {"prompts": len(records), "kept": len(pairs), "report": report}
    if pairs:
        summary.update(train_sft(pairs, ctx.model_in, ctx.model_out, cfg.train, cfg.max_length, False, ctx.seed,
                                 ctx.callbacks()))
        summary["note"] = f"SFT on {len(pairs)} verified traces"
    else:
        shutil.copytree(ctx.model_in, ctx.model_out)
        summary.update(note="no sampled trace verified: the model passes through unchanged", param_delta_l2=0.0)
    (ctx.out_dir / "distill_report.json").write_text(json.dumps(summary, indent=2))
    log.info("distill: %s", summary["note"])
    return summary
