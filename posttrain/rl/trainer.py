"""``MGPOTrainer``: TRL's GRPOTrainer with MGPO-weighted advantages and optional Long2Short rewards.

Two narrow overrides of TRL 1.16 (pinned in pyproject.toml):

- ``_calculate_rewards`` returns the rewards of every process's rollouts (TRL gathers them so
  that groups can be normalised). We keep their total per rollout, which gives each group's pass
  rate from the global rewards; with Long2Short on, the length shift is added here, before TRL
  normalises per group (design.md §1.2: a reward change, among correct rollouts only).
- ``_generate_and_score_completions`` returns this process's slice of the GRPO advantages; we
  multiply it by the MGPO weight of each rollout's group (design.md §1.2: the weight multiplies
  advantages, not rewards, which std normalisation would cancel).

With ``mgpo_lambda = 0`` and Long2Short off the weights are exactly 1 and the update equals
plain GRPO's. Extra metrics per step: ``reward/<verifier>/mean`` and ``/std`` (per verifier
named in the data), ``mgpo/weight_mean``, ``mgpo/weight_min``, the group
pass-rate histogram ``pass_rate/<bin>`` (fraction of groups), and rollout throughput
``rollout/seconds`` (generation and scoring) and ``rollout/tokens_per_second``.
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer

from posttrain.rl.mgpo import group_pass_rates, long2short_shift, weight_advantages

# Pass-rate histogram bins (fraction of groups per bin, logged per step).
PASS_RATE_BINS = {
    "zero": lambda p: p == 0,
    "low": lambda p: (p > 0) & (p < 0.5),
    "half": lambda p: p == 0.5,
    "high": lambda p: (p > 0.5) & (p < 1),
    "one": lambda p: p == 1,
}
CORRECT_AT = 1.0 - 1e-6  # a rollout is correct when its reward reaches 1 (verifier scores lie in [0, 1])


class MGPOTrainer(GRPOTrainer):
    """GRPOTrainer with MGPO advantage weights (``mgpo_lambda``) and Long2Short (``long2short``).

    Args (beyond GRPOTrainer's):
        mgpo_lambda: lambda >= 0 of ``w = exp(-lambda * KL(Bern(p) || Bern(0.5)))``; 0 = plain GRPO.
        long2short: lambda_len of the Long2Short shift (0.2 in the 3B report), or None for off.

    The pass rate p of a group is the mean of its rollouts' total rewards clipped to [0, 1] (the
    fraction correct for binary verifier rewards). Long2Short treats a rollout as correct when
    its reward is 1 and needs exactly one reward function.
    """

    def __init__(self, *args, mgpo_lambda: float = 0.0, long2short: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if mgpo_lambda < 0:
            raise ValueError(f"mgpo_lambda must be >= 0, got {mgpo_lambda}")
        if long2short is not None and len(self.reward_funcs) != 1:
            raise ValueError("Long2Short needs exactly one reward function")
        self.mgpo_lambda = mgpo_lambda
        self.long2short = long2short
        self._global_rewards: torch.Tensor | None = None

    def _group_size(self) -> int:
        """G for the current mode (TRL uses a separate count for evaluation)."""
        return self.num_generations if self.model.training else self.num_generations_eval

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's gathered rewards ``[n_global, n_funcs]``; remembers their totals, adds Long2Short."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        weights = self.reward_weights.to(rewards_per_func.device)
        total = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        self._global_rewards = total.clamp(0.0, 1.0)
        if inputs and "verifier" in inputs[0]:
            self._log_per_verifier(gather_object([x["verifier"] for x in inputs]), total)
        if self.long2short is not None:
            lengths = torch.tensor([max(1, len(ids)) for ids in completion_ids_list],
                                   dtype=torch.float32, device=rewards_per_func.device)
            lengths = gather(lengths)
            shifted = long2short_shift(total, total >= CORRECT_AT, lengths, self._group_size(), self.long2short)
            rewards_per_func = rewards_per_func.clone()
            rewards_per_func[:, 0] += (shifted - total) / weights[0]
        return rewards_per_func

    def _log_per_verifier(self, names: list[str], total: torch.Tensor) -> None:
        """``reward/<verifier>/mean`` and ``/std`` over the gathered rollouts of each verifier."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name in sorted(set(names)):
            mask = torch.tensor([n == name for n in names], device=total.device)
            values = total[mask]
            metrics[f"reward/{name}/mean"].append(values.mean().item())
            metrics[f"reward/{name}/std"].append(values.std(unbiased=False).item())

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout batch with this process's advantages multiplied by MGPO weights."""
        started = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        seconds = time.perf_counter() - started
        mode = "train" if self.model.training else "eval"
        group_size = self._group_size()
        n_local = output["advantages"].shape[0]
        start = self.accelerator.process_index * n_local
        output["advantages"], weights = weight_advantages(
            output["advantages"], self._global_rewards, group_size, self.mgpo_lambda, slice(start, start + n_local)
        )
        metrics = self._metrics[mode]
        metrics["mgpo/weight_mean"].append(weights.mean().item())
        metrics["mgpo/weight_min"].append(weights.min().item())
        pass_rates = group_pass_rates(self._global_rewards, group_size)
        for name, in_bin in PASS_RATE_BINS.items():
            metrics[f"pass_rate/{name}"].append(in_bin(pass_rates).float().mean().item())
        tokens = self.accelerator.gather(output["completion_mask"].sum()).sum().item()
        metrics["rollout/seconds"].append(seconds)
        metrics["rollout/tokens_per_second"].append(tokens / max(seconds, 1e-9))
        return output
