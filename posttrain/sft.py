"""Supervised fine-tuning stages (3B §2.1) on TRL's SFTTrainer; loss on assistant tokens only."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from posttrain.checkpoints import param_delta, save_model
from posttrain.config import SFTStage, TrainSpec
from posttrain.context import StageContext
from posttrain.data import load_mixture
from posttrain.records import Record

log = logging.getLogger(__name__)


def sft_pairs(records: list[Record], tokenizer=None, min_solution_tokens: int = 0) -> list[dict]:
    """Conversational prompt/completion pairs from records that carry a reference solution.

    With ``min_solution_tokens > 0`` (the hard subset of stage 2) shorter solutions are dropped;
    lengths are counted with ``tokenizer``.
    """
    pairs = []
    for r in records:
        target = r.reference.solution
        if not target:
            continue
        if min_solution_tokens and len(tokenizer(target, add_special_tokens=False)["input_ids"]) < min_solution_tokens:
            continue
        pairs.append(r.sft_pair(target))
    return pairs


def train_sft(pairs: list[dict], model_dir: Path, out_dir: Path, train: TrainSpec, max_length: int,
              packing: bool, seed: int, callbacks: list) -> dict:
    """Fine-tune the model in ``model_dir`` on ``pairs`` and save it to ``out_dir``.

    Returns ``{"examples", "steps", "train_loss", "param_delta_l2"}``.

    Raises:
        ValueError: if ``pairs`` is empty.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from posttrain.trl_args import sft_config

    if not pairs:
        raise ValueError("no SFT examples: every record lacked a solution or was filtered out")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "completion")} for p in pairs])
    args = sft_config(train, out_dir / "checkpoints", seed, max_length, packing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks)
    result = trainer.train()
    save_model(trainer.model, tokenizer, out_dir)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return {"examples": len(pairs), "steps": result.global_step, "train_loss": result.training_loss,
            "param_delta_l2": param_delta(model_dir, out_dir)["l2"]}


def run_sft_stage(ctx: StageContext, cfg: SFTStage) -> dict:
    """One SFT stage: load its data mixture, keep records with solutions (and long enough), train.

    With ``cfg.probe`` (diversity probing, 1.5B §3.1-3.3): probe sets per subdomain are held out,
    a checkpoint is saved every ``probe.every`` steps, each is scored (Pass@K per subdomain), the
    best per subdomain is kept and, with ``probe.fuse``, the experts are fused by weighted
    parameter averaging into the stage's model (``posttrain.merge``). Writes ``probe_report.json``
    and ``probe_heatmap.png`` beside the model.
    """
    from transformers import AutoTokenizer

    records = load_mixture(cfg.data, ctx.data_root, seed=ctx.seed)
    probes: dict = {}
    callbacks = ctx.callbacks()
    if cfg.probe is not None and cfg.probe.every:
        from posttrain.probing import probe_callback, split_probe_sets

        records, probes = split_probe_sets(records, cfg.probe.key, cfg.probe.per_subdomain, ctx.seed)
        callbacks.append(probe_callback(ctx.out_dir, cfg.probe.every))
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.model_in))
    pairs = sft_pairs(records, tokenizer, cfg.min_solution_tokens)
    log.info("%s: %d of %d records kept for SFT", ctx.stage, len(pairs), len(records))
    summary = train_sft(pairs, ctx.model_in, ctx.model_out, cfg.train, cfg.max_length, cfg.packing, ctx.seed,
                        callbacks)
    summary["records"] = len(records)
    if probes:
        summary.update(_probe_and_fuse(ctx, cfg, probes))
    return summary


def _probe_and_fuse(ctx: StageContext, cfg: SFTStage, probes: dict) -> dict:
    """Score the saved checkpoints, select the best per subdomain, fuse them into ``ctx.model_out``."""
    from posttrain.checkpoints import param_delta
    from posttrain.merge import fuse_checkpoints
    from posttrain.probing import PROBE_DIR, expert_weights, matrix_table, run_probing, saved_checkpoints

    checkpoints = saved_checkpoints(ctx.out_dir)
    log_step = (lambda m, step: ctx.log_metrics({f"train/{ctx.stage}/{k}": v for k, v in m.items()}, step))
    matrix, selection = run_probing(checkpoints, probes, cfg.probe, ctx.seed, ctx.out_dir, log_step)
    out = {"probe_subdomains": len(probes), "probe_checkpoints": len(checkpoints),
           "probe_selection": selection, "probe_table": matrix_table(matrix, selection)}
    if cfg.probe.fuse:
        weights = expert_weights(selection)
        fused = ctx.out_dir / "fused"
        report = fuse_checkpoints([ctx.out_dir / PROBE_DIR / name for name in weights], fused, list(weights.values()))
        shutil.rmtree(ctx.model_out)
        fused.rename(ctx.model_out)
        out.update(fusion_experts=len(weights), fusion_seconds=report["seconds"],
                   fusion_peak_rss_bytes=report["peak_rss_bytes"],
                   param_delta_l2=param_delta(ctx.model_in, ctx.model_out)["l2"])
    shutil.rmtree(ctx.out_dir / PROBE_DIR, ignore_errors=True)
    return out
