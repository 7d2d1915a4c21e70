"""MGPO and Long2Short: the recipe's changes to GRPO's advantages and rewards, as plain tensors.

- MGPO (VibeThinker 1.5B §2; design.md §1.2): a group of G rollouts with pass rate p gets the
  weight ``w = exp(-lambda * D(p))``, ``D(p) = KL(Bern(p) || Bern(0.5)) = p ln(2p) + (1-p) ln(2(1-p))``,
  which multiplies each rollout's advantage (not its reward: per-group std normalisation would
  cancel a reward scale). ``lambda = 0`` is plain GRPO.
- Long2Short (VibeThinker 3B §2.2): among a group's correct rollouts only, with ``s = 1/length``,
  ``r_i += lambda_len * (s_i - mean_c(s)) / max_c |s_j - mean_c(s)|``; the shifts sum to zero and a
  group with fewer than two correct rollouts (or equal lengths) is unchanged.

Nothing here imports TRL: ``posttrain.rl`` applies these inside its GRPOTrainer subclass.
"""

from __future__ import annotations

import torch


def entropy_deviation(pass_rate: torch.Tensor) -> torch.Tensor:
    """``D(p) = KL(Bern(p) || Bern(0.5))`` in nats, elementwise; ``0 ln 0 = 0``, so D(0) = D(1) = ln 2.

    Args:
        pass_rate: pass rates in [0, 1], any shape.

    Source: VibeThinker-1.5B §2 (MGPO), design.md §1.2.
    """
    p = pass_rate.to(torch.float64).clamp(0.0, 1.0)
    q = 1.0 - p
    out_dtype = pass_rate.dtype if pass_rate.is_floating_point() else torch.float32
    return (torch.xlogy(p, 2.0 * p) + torch.xlogy(q, 2.0 * q)).to(out_dtype)


def mgpo_weights(pass_rate: torch.Tensor, lam: float) -> torch.Tensor:
    """MGPO weight ``w = exp(-lambda * D(p))`` per group, same shape as ``pass_rate`` ([n_groups]).

    ``lam = 0`` gives all ones (plain GRPO). Example: p = 0.25, lambda = 1 gives D = 0.1308,
    w = 0.8774; p = 0.5 gives w = 1 for any lambda.

    Raises:
        ValueError: if ``lam`` is negative.
    """
    if lam < 0:
        raise ValueError(f"MGPO lambda must be >= 0, got {lam}")
    return torch.exp(-lam * entropy_deviation(pass_rate))


def group_pass_rates(correct: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pass rate per group: the mean of ``correct`` (1/0, or scores in [0, 1]) over each group.

    Args:
        correct: ``[n_groups * group_size]`` in group order (TRL's layout: a prompt's G rollouts
            are consecutive).

    Returns:
        ``[n_groups]`` pass rates.

    Raises:
        ValueError: if the length is not a multiple of ``group_size``.
    """
    if correct.numel() % group_size:
        raise ValueError(f"{correct.numel()} rewards do not split into groups of {group_size}")
    return correct.float().view(-1, group_size).mean(dim=1)


def weight_advantages(
    advantages: torch.Tensor, global_correct: torch.Tensor, group_size: int, lam: float, local: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply this process's advantages by the MGPO weight of their groups.

    Args:
        advantages: ``[n_local]``, or ``[n_local, T]`` per token, this process's slice.
        global_correct: ``[n_groups * group_size]`` correctness of every rollout of every process
            (gathered), in group order.
        group_size: G, rollouts per prompt.
        lam: MGPO lambda (0 returns the advantages unchanged).
        local: this process's slice of the gathered rollouts.

    Returns:
        ``(weighted advantages, per-group weights [n_groups])``.
    """
    weights = mgpo_weights(group_pass_rates(global_correct, group_size), lam)
    per_rollout = weights.repeat_interleave(group_size)[local].to(advantages.device, advantages.dtype)
    if advantages.dim() > 1:
        per_rollout = per_rollout.unsqueeze(-1)
    return advantages * per_rollout, weights


def long2short_shift(
    rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, group_size: int, lam_len: float = 0.2
) -> torch.Tensor:
    """Long2Short rewards: correct rollouts shorter than their correct group-mates gain reward.

    Args:
        rewards: ``[n_groups * group_size]`` rewards in group order.
        correct: same shape, bool (or 0/1): which rollouts are correct.
        lengths: same shape, completion lengths in tokens (> 0).
        group_size: G.
        lam_len: lambda_len, 0.2 in the report.

    Returns:
        New rewards ``r_i + lam_len * (s_i - mean_c(s)) / max_c |s_j - mean_c(s)|`` for correct
        rollouts (``s = 1/length``, ``mean_c``/``max_c`` over the group's correct rollouts),
        unchanged elsewhere; the shifts of a group sum to zero. Fewer than two correct rollouts,
        or all of equal length: no shift.

    Source: VibeThinker-3B §2.2; design.md §1.2.

    Raises:
        ValueError: on mismatched shapes or a non-positive length.
    """
    if not (rewards.shape == correct.shape == lengths.shape) or rewards.numel() % group_size:
        raise ValueError("rewards, correct and lengths must have one equal length, a multiple of group_size")
    if (lengths <= 0).any():
        raise ValueError("completion lengths must be positive")
    mask = correct.bool().view(-1, group_size)
    s = 1.0 / lengths.to(torch.float64).view(-1, group_size)
    n_correct = mask.sum(dim=1, keepdim=True)
    mean_c = torch.where(mask, s, 0.0).sum(dim=1, keepdim=True) / n_correct.clamp(min=1)
    dev = torch.where(mask, s - mean_c, 0.0)
    scale = dev.abs().amax(dim=1, keepdim=True)
    shift = torch.where((scale > 0) & (n_correct >= 2), dev / scale.clamp(min=1e-300), 0.0) * lam_len
    return rewards + shift.view(-1).to(rewards.dtype)
