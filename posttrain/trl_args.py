"""The one place where recipe fields become TRL/transformers argument objects.

Our names -> TRL's: ``group_size`` -> ``num_generations``, ``kl_coef`` -> ``beta``,
``train.per_device_batch_size`` -> ``per_device_train_batch_size`` (for GRPO it counts
completions, so it must be a multiple of ``group_size``).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import LoraSpec, RLStage, TrainSpec


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _schedule(train: TrainSpec) -> dict:
    """Length and LR schedule: ``max_steps`` or ``num_train_epochs``; a cosine with a floor becomes
    transformers' ``cosine_with_min_lr`` with ``min_lr``."""
    out = dict(max_steps=train.max_steps if train.max_steps is not None else -1,
               num_train_epochs=train.epochs if train.epochs is not None else 1.0,
               learning_rate=train.learning_rate, lr_scheduler_type=train.lr_scheduler_type)
    if train.min_learning_rate is not None:
        out.update(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": train.min_learning_rate})
    return out


def _common(train: TrainSpec, output_dir: Path, seed: int) -> dict:
    gpu = _on_gpu()
    return dict(
        output_dir=str(output_dir), **_schedule(train), warmup_steps=train.warmup_ratio,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps, weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm, logging_steps=train.logging_steps, seed=seed, data_seed=seed,
        use_cpu=not gpu, bf16=gpu, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
    )


def sft_config(train: TrainSpec, output_dir: Path, seed: int, max_length: int, packing: bool, save_steps: int = 0):
    """``trl.SFTConfig`` for a stage; loss on completion (assistant) tokens only.

    ``packing``: TRL's best-fit-decreasing packing into rows of ``max_length`` tokens, with
    position ids restarting per example (padding-free; no attention across examples where the
    attention implementation supports it). ``save_steps``: trainer checkpoints (with optimizer,
    scheduler, RNG and data position) every N steps into ``output_dir``, the newest one kept.
    """
    from trl import SFTConfig

    extra = dict(save_strategy="steps", save_steps=save_steps, save_total_limit=1) if save_steps else {}
    common = _common(train, output_dir, seed)
    common.update(extra)
    return SFTConfig(**common, max_length=max_length, packing=packing, completion_only_loss=True,
                     dataset_num_proc=None)


def grpo_config(stage: RLStage, output_dir: Path, seed: int, use_vllm: bool, train: TrainSpec | None = None,
                max_completion_length: int | None = None, reward_weights: list[float] | None = None):
    """``trl.GRPOConfig`` for an RL phase (or its sub-phase, with its own ``train`` and length).

    On-policy: one optimiser step per rollout batch (TRL's ``num_iterations=1``); with vLLM
    rollouts TRL's truncated importance-sampling correction for the engine mismatch stays on
    (its default). Checkpoints every ``stage.save_steps`` steps into ``output_dir`` with
    optimizer, scheduler and RNG state (the stage mirrors them to the artifact store).

    Raises:
        ValueError: if the batch size is not a multiple of ``group_size``.
    """
    from trl import GRPOConfig

    train = train or stage.train
    if train.per_device_batch_size % stage.group_size:
        raise ValueError(f"train.per_device_batch_size ({train.per_device_batch_size}) counts completions and "
                         f"must be a multiple of group_size ({stage.group_size})")
    extra = dict(use_vllm=True, vllm_mode="colocate", vllm_importance_sampling_correction=True) if use_vllm else {}
    if stage.save_steps:
        extra.update(save_strategy="steps", save_steps=stage.save_steps, save_total_limit=1)
    common = _common(train, output_dir, seed)
    common.update(extra)
    return GRPOConfig(**common, num_generations=stage.group_size, num_iterations=1,
                      max_completion_length=max_completion_length or stage.max_completion_length,
                      temperature=stage.temperature, top_p=stage.top_p, beta=stage.kl_coef,
                      reward_weights=reward_weights)


def lora_config(spec: LoraSpec | None):
    """``peft.LoraConfig`` for a recipe's ``lora`` block, or None for full fine-tuning."""
    if spec is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type="CAUSAL_LM")
