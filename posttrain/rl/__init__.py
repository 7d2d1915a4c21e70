"""Reasoning and instruct RL on TRL's GRPOTrainer with the recipe's MGPO and Long2Short (design.md §1.2).

- ``mgpo``: the weight and reward formulas as plain tensors (no TRL import);
- ``trainer``: ``MGPOTrainer``, TRL's GRPOTrainer with those applied at the narrowest point;
- ``filtering``: drop prompts the starting checkpoint solves 0% or 100% of the time;
- ``stage``: one RL phase end to end (filter, train with checkpoints and resume, save).
"""

from posttrain.rl.stage import run_rl_stage, train_grpo

__all__ = ["run_rl_stage", "train_grpo"]
