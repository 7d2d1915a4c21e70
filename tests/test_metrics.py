"""Evaluation metrics against hand-computed values."""

import math

import pytest

from posttrain.eval.metrics import avg_at_k, majority_correct, pass_at_k, pass_k_values, stderr_over_problems, summarise


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 0, 1, 0.0),
    (4, 4, 1, 1.0),
    (4, 1, 1, 0.25),
    (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),        # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
    (64, 1, 8, 8 / 64),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_and_stderr():
    correct = [[True, False, False, False], [True, True, True, True]]  # per-problem means 0.25, 1.0
    assert avg_at_k(correct) == pytest.approx(0.625)
    # sample std of (0.25, 1.0) = 0.53033; / sqrt(2)
    assert stderr_over_problems(correct) == pytest.approx(math.sqrt(((0.375**2) * 2) / 1 / 2))


def test_majority():
    assert majority_correct(["5", "5", "7"], [True, True, False])
    assert not majority_correct(["7", "5", "7"], [False, True, False])
    assert majority_correct(["5", "7"], [True, False])  # tie: first seen wins
    assert not majority_correct([None, None], [False, False])


def test_summarise_keys():
    out = summarise([[True, False, False, False]], [["1", "2", "3", "4"]])
    assert set(out) >= {"avg_at_4", "pass_at_1", "pass_at_2", "pass_at_4", "maj_at_4", "stderr"}
    assert out["pass_at_1"] == pytest.approx(0.25)
    assert pass_k_values(8) == [1, 2, 4, 8]
    assert pass_k_values(6) == [1, 2, 4, 6]
