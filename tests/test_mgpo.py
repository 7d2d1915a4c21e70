"""MGPO weights and Long2Short shifts against hand-computed values (design.md §1.2)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.mgpo import entropy_deviation, group_pass_rates, long2short_shift, mgpo_weights, weight_advantages


def test_entropy_deviation_hand_values():
    d = entropy_deviation(torch.tensor([0.5, 0.25, 0.0, 1.0, 0.75]))
    # D(0.25) = 0.25 ln 0.5 + 0.75 ln 1.5 = -0.17329 + 0.30410 = 0.13081
    expected = [0.0, 0.130812, math.log(2), math.log(2), 0.130812]
    assert d.tolist() == pytest.approx(expected, abs=1e-6)


def test_mgpo_weights_hand_values():
    assert mgpo_weights(torch.tensor([0.5]), 3.0).item() == pytest.approx(1.0)
    assert mgpo_weights(torch.tensor([0.25]), 1.0).item() == pytest.approx(0.8774, abs=1e-4)
    assert mgpo_weights(torch.tensor([0.0, 1.0]), 2.0).tolist() == pytest.approx([0.25, 0.25])  # exp(-2 ln 2)
    assert mgpo_weights(torch.tensor([0.1, 0.9]), 0.0).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="lambda"):
        mgpo_weights(torch.tensor([0.5]), -1.0)


def test_group_pass_rates_and_bad_shape():
    assert group_pass_rates(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4).tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match="groups of 4"):
        group_pass_rates(torch.ones(6), 4)


def test_weighting_leaves_zero_variance_groups_at_zero():
    # group 1 all wrong, group 2 all right: GRPO advantages are 0 there and stay 0.
    correct = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    advantages = torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 1.5, -0.5, -0.5, -0.5])
    weighted, weights = weight_advantages(advantages, correct, 4, 1.0, slice(0, 12))
    assert weighted[:8].tolist() == [0.0] * 8
    assert weights[2].item() == pytest.approx(0.8774, abs=1e-4)
    assert weighted[8:].tolist() == pytest.approx([1.5 * 0.87737, -0.5 * 0.87737, -0.5 * 0.87737, -0.5 * 0.87737], abs=1e-4)


def test_weighting_with_a_two_process_gather():
    """Groups span processes: each process weights its own slice by the global pass rates."""
    correct = torch.tensor([1.0, 0, 1, 1, 1, 0, 0, 0])  # groups of 4: p = 0.75 and 0.25
    advantages = torch.arange(8, dtype=torch.float32) - 3.5
    w = mgpo_weights(torch.tensor([0.75, 0.25]), 1.0)
    full, _ = weight_advantages(advantages, correct, 4, 1.0, slice(0, 8))
    # process 0 holds gathered rows 0..3, process 1 rows 4..7
    first, _ = weight_advantages(advantages[:4], correct, 4, 1.0, slice(0, 4))
    second, _ = weight_advantages(advantages[4:], correct, 4, 1.0, slice(4, 8))
    assert torch.equal(torch.cat([first, second]), full)
    assert second.tolist() == pytest.approx((advantages[4:] * w[1]).tolist())
    # a slice that cuts through a group uses that group's global pass rate
    middle, _ = weight_advantages(advantages[2:6], correct, 4, 1.0, slice(2, 6))
    assert middle.tolist() == pytest.approx([a * w[i // 4].item() for a, i in zip(advantages[2:6].tolist(), range(2, 6))])


def test_per_token_advantages_are_weighted_per_row():
    correct = torch.tensor([1.0, 0, 0, 0])
    weighted, weights = weight_advantages(torch.ones(4, 3), correct, 4, 1.0, slice(0, 4))
    assert weighted.shape == (4, 3) and torch.allclose(weighted, torch.full((4, 3), weights[0].item()))


def test_long2short_hand_vector():
    # correct lengths 10, 20, 40: s = .1, .05, .025, mean .058333, deviations .041667, -.008333,
    # -.033333, max .041667 -> shifts +0.2, -0.04, -0.16. The wrong rollout is unchanged.
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = long2short_shift(rewards, rewards.bool(), torch.tensor([10.0, 20, 40, 5]), 4)
    assert out.tolist() == pytest.approx([1.2, 0.96, 0.84, 0.0])
    assert (out - rewards)[:3].sum().item() == pytest.approx(0.0, abs=1e-7)


def test_long2short_edge_cases():
    single = torch.tensor([1.0, 0, 0, 0])
    assert long2short_shift(single, single.bool(), torch.tensor([3.0, 9, 9, 9]), 4).tolist() == single.tolist()
    equal = torch.tensor([1.0, 1, 0, 0])
    assert long2short_shift(equal, equal.bool(), torch.tensor([5.0, 5, 1, 2]), 4).tolist() == equal.tolist()
    two = torch.tensor([1.0, 1, 0, 0, 1, 1, 1, 1])
    out = long2short_shift(two, two.bool(), torch.tensor([10.0, 30, 1, 1, 8, 8, 8, 16]), 4, lam_len=0.5)
    assert out[:2].tolist() == pytest.approx([1.5, 0.5])  # two correct: +-lambda_len
    assert (out[4:] - 1).sum().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="positive"):
        long2short_shift(single, single.bool(), torch.tensor([0.0, 1, 1, 1]), 4)
