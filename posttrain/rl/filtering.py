"""Prompt filtering before an RL phase: keep prompts the starting checkpoint sometimes solves.

A prompt solved by all or none of its G rollouts gives a group with zero reward variance, hence
zero GRPO advantage and no gradient (design.md §1.2, VibeThinker 1.5B §3.4). We sample the
starting checkpoint G times per prompt through the engine interface (vLLM where available) and
drop those prompts before the phase starts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.config import PromptFilter
from posttrain.engines import SamplingParams, open_engine
from posttrain.records import Record
from posttrain.verifiers.base import verify_groups

log = logging.getLogger(__name__)


@dataclass
class FilterReport:
    """What the filter did: per-prompt pass rates and why each dropped prompt went.

    ``histogram`` maps "k/G" (mean reward times G, rounded: rollouts correct out of G for binary
    rewards) to a prompt count.
    """

    group_size: int
    pass_rates: dict[str, float] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    dropped_unsolved: list[str] = field(default_factory=list)
    dropped_solved: list[str] = field(default_factory=list)
    dropped_constant: list[str] = field(default_factory=list)  # graded rewards, equal but in (0, 1)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def histogram(self) -> dict[str, int]:
        counts = Counter(round(p * self.group_size) for p in self.pass_rates.values())
        return {f"{k}/{self.group_size}": counts.get(k, 0) for k in range(self.group_size + 1)}

    def metrics(self) -> dict[str, float]:
        """Counts for MLflow: ``filter/prompts``, ``filter/kept``, ``filter/dropped_*``, histogram."""
        out = {"filter/prompts": len(self.pass_rates), "filter/kept": len(self.kept),
               "filter/dropped_unsolved": len(self.dropped_unsolved),
               "filter/dropped_solved": len(self.dropped_solved),
               "filter/dropped_constant": len(self.dropped_constant), "filter/seconds": self.seconds,
               "filter/tokens_per_second": self.tokens / max(self.seconds, 1e-9)}
        out.update({f"filter/pass_{k.replace('/', '_of_')}": v for k, v in self.histogram.items()})
        return out

    def to_json(self) -> dict:
        """The report as written to ``filter_report.json`` in the stage output."""
        return {"group_size": self.group_size, "histogram": self.histogram, "kept": self.kept,
                "dropped_unsolved": self.dropped_unsolved, "dropped_solved": self.dropped_solved,
                "dropped_constant": self.dropped_constant,
                "pass_rates": self.pass_rates, "seconds": self.seconds, "tokens": self.tokens}


def grade_groups(records: list[Record], completions: list[list[str]]) -> list[list[float]]:
    """Verifier scores ``[n_prompts][group_size]`` of each prompt's completions (batched, in parallel)."""
    return [[float(v.score) for v in row] for row in verify_groups(records, completions)]


def split_by_pass_rate(records: list[Record], scores: list[list[float]], group_size: int) -> tuple[list[Record], FilterReport]:
    """Keep the records whose rollouts' rewards vary; drop the rest, saying why.

    With binary rewards this keeps pass rates strictly in (0, 1). Graded rewards (the synthetic
    task, code's fraction of tests) are kept whenever they differ within the group: equal rewards
    give zero GRPO advantage whatever their value.

    Args:
        records: the phase's prompts.
        scores: ``[n_prompts][group_size]`` verifier scores in [0, 1].

    Returns:
        ``(kept records, report)``; ``report.pass_rates`` holds each prompt's mean reward.
    """
    report = FilterReport(group_size=group_size)
    kept = []
    for record, group in zip(records, scores, strict=True):
        rate = sum(group) / len(group)
        report.pass_rates[record.id] = rate
        if max(group) - min(group) > 1e-9:
            report.kept.append(record.id)
            kept.append(record)
        elif rate <= 0.0:
            report.dropped_unsolved.append(record.id)
        elif rate >= 1.0:
            report.dropped_solved.append(record.id)
        else:
            report.dropped_constant.append(record.id)
    return kept, report


def filter_prompts(records: list[Record], model_dir: Path, group_size: int, max_new_tokens: int,
                   cfg: PromptFilter, seed: int) -> tuple[list[Record], FilterReport]:
    """Sample ``model_dir`` ``group_size`` times per prompt and keep prompts with pass rate in (0, 1).

    Args:
        records: the phase's prompts (chat prompts via ``Record.chat``).
        model_dir: the phase's starting checkpoint.
        group_size: G, as in the phase.
        max_new_tokens: rollout length, tokens (the phase's context unless the filter sets one).

    Returns:
        ``(kept records, report)``; the engine is closed before returning.
    """
    import time

    params = SamplingParams(n=group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens or max_new_tokens, seed=seed)
    started = time.monotonic()
    engine = open_engine(cfg.engine, model_dir, batch_size=cfg.batch_size)
    try:
        groups = engine.generate([r.chat() for r in records], params)
    finally:
        engine.close()
    completions = [[c.text for c in group] for group in groups]
    kept, report = split_by_pass_rate(records, grade_groups(records, completions), group_size)
    report.seconds = time.monotonic() - started
    report.tokens = sum(c.num_tokens for group in groups for c in group)
    log.info("prompt filter: %d prompts, kept %d, dropped %d never solved and %d always solved; histogram %s",
             len(records), len(kept), len(report.dropped_unsolved), len(report.dropped_solved), report.histogram)
    return kept, report
