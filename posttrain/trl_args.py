"""The one place where recipe fields become TRL/transformers argument objects.

Our names -> TRL's: ``group_size`` -> ``num_generations``, ``kl_coef`` -> ``beta``,
``train.per_device_batch_size`` -> ``per_device_train_batch_size`` (for GRPO it counts
completions, so it must be a multiple of ``group_size``).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import RLStage, TrainSpec


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _common(train: TrainSpec, output_dir: Path, seed: int) -> dict:
    gpu = _on_gpu()
    return dict(
        output_dir=str(output_dir), max_steps=train.max_steps, learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type, warmup_steps=train.warmup_ratio,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps, weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm, logging_steps=train.logging_steps, seed=seed, data_seed=seed,
        use_cpu=not gpu, bf16=gpu, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
    )


def sft_config(train: TrainSpec, output_dir: Path, seed: int, max_length: int, packing: bool):
    """``trl.SFTConfig`` for a stage; loss on completion (assistant) tokens only."""
    from trl import SFTConfig

    return SFTConfig(**_common(train, output_dir, seed), max_length=max_length, packing=packing,
                     completion_only_loss=True, dataset_num_proc=None)


def grpo_config(stage: RLStage, output_dir: Path, seed: int, use_vllm: bool):
    """``trl.GRPOConfig`` for an RL phase (plain GRPO advantages; MGPO arrives with the RL issue).

    Raises:
        ValueError: if the batch size is not a multiple of ``group_size``.
    """
    from trl import GRPOConfig

    if stage.train.per_device_batch_size % stage.group_size:
        raise ValueError(f"train.per_device_batch_size ({stage.train.per_device_batch_size}) counts completions and "
                         f"must be a multiple of group_size ({stage.group_size})")
    extra = dict(use_vllm=True, vllm_mode="colocate") if use_vllm else {}
    return GRPOConfig(**_common(stage.train, output_dir, seed), num_generations=stage.group_size,
                      max_completion_length=stage.max_completion_length, temperature=stage.temperature,
                      top_p=stage.top_p, beta=stage.kl_coef, **extra)
