"""Evaluation metrics (1.5B §4.1; Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``.

    ``n`` samples, ``c`` of them correct. Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # product form avoids huge binomials: prod_{i=n-c+1}^{n} (1 - k/i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean correctness over problems and their samples, ``correct`` shaped ``[problems][k]``."""
    return sum(sum(row) / len(row) for row in correct) / len(correct)


def stderr_over_problems(correct: Sequence[Sequence[bool]]) -> float:
    """Standard error of avg@k over problems: sample std of per-problem means / sqrt(problems)."""
    means = [sum(row) / len(row) for row in correct]
    n = len(means)
    if n < 2:
        return 0.0
    mu = sum(means) / n
    return math.sqrt(sum((m - mu) ** 2 for m in means) / (n - 1) / n)


def majority_correct(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    """maj@k for one problem: is the most frequent parsed answer correct? (ties: first seen wins).

    ``None`` answers (nothing parsed) never win.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return any(c for a, c in zip(answers, correct) if a == winner)


def pass_k_values(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n (and n itself)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarise(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[Hashable | None]] | None = None) -> dict:
    """All figures of one benchmark: ``avg_at_<k>``, ``pass_at_<j>`` for j in 1, 2, 4.., ``maj_at_<k>``, ``stderr``.

    ``correct`` and ``answers`` are shaped ``[problems][k]`` (every problem with the same k).
    """
    k = len(correct[0])
    out = {f"avg_at_{k}": avg_at_k(correct), "stderr": stderr_over_problems(correct), "problems": len(correct)}
    for j in pass_k_values(k):
        out[f"pass_at_{j}"] = sum(pass_at_k(k, sum(row), j) for row in correct) / len(correct)
    if answers is not None:
        out[f"maj_at_{k}"] = sum(majority_correct(a, c) for a, c in zip(answers, correct)) / len(correct)
    return out


Equivalent = Callable[[list[tuple[str, str]]], list[bool]]


def group_answers(answers: Sequence[str | None], equivalent: Equivalent | None = None) -> list[int | None]:
    """A group id per answer (None for a missing answer): equivalent answers share an id.

    Distinct answers are compared pairwise in one batched ``equivalent`` call (``(a, b) -> same?``;
    default string equality) and joined transitively. Group ids are the index of the group's
    first distinct answer, so they follow first appearance.
    """
    distinct = list(dict.fromkeys(a for a in answers if a is not None))
    parent = list(range(len(distinct)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    pairs = [(i, j) for i in range(len(distinct)) for j in range(i + 1, len(distinct))]
    if equivalent and pairs:
        for (i, j), same in zip(pairs, equivalent([(distinct[i], distinct[j]) for i, j in pairs]), strict=True):
            if same:
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
    position = {a: k for k, a in enumerate(distinct)}
    return [None if a is None else root(position[a]) for a in answers]
