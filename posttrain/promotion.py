"""The nightly promotion gate: does a candidate beat the champion on the same problems?

Both models are scored per problem (the mean over a problem's k samples, written by the evaluate
stage to ``problems/<benchmark>.jsonl``). The gate pairs the two scores of each problem and
bootstraps the mean difference over problems (a paired bootstrap: Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993; percentile intervals, ch. 13). Pairing removes the
between-problem variance, which dominates at the few dozen problems of a contest benchmark.

The candidate is promoted iff the one-sided lower confidence bound of the mean difference
(candidate - champion) is above ``PromotionSpec.min_improvement``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from posttrain.config import PromotionSpec

METRICS = ("avg", "score")
_SHARD = re.compile(r"^(?P<name>.+)\.shard-\d+-of-\d+$")


def _benchmark_of(path: Path) -> str:
    stem = path.name.removesuffix(".jsonl")
    match = _SHARD.match(stem)
    return match["name"] if match else stem


def problem_scores(eval_output_dir: Path, metric: str = "avg") -> dict[str, dict[str, float]]:
    """Per-problem scores of one evaluation: ``{benchmark: {problem id: score}}``, scores in [0, 1].

    ``metric`` ``avg``: the fraction of the problem's k samples that passed (the problem's term of
    avg@k); ``score``: the mean verifier score (partial credit). Reads ``problems/*.jsonl``
    (shards of a benchmark merged); outputs written before those files existed are read from
    ``samples/*.jsonl`` (``passed`` or ``score`` of each sample, averaged per problem).

    Raises:
        ValueError: for an unknown ``metric``, or a problem id that comes twice in a benchmark.
        FileNotFoundError: if the folder holds neither ``problems/`` nor ``samples/`` files.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    folder = Path(eval_output_dir)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    problem_files = sorted((folder / "problems").glob("*.jsonl"))
    if problem_files:
        for path in problem_files:
            bench = _benchmark_of(path)
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                if row["id"] in table[bench]:
                    raise ValueError(f"{path}: problem {row['id']!r} of {bench} comes twice")
                table[bench][row["id"]] = float(row[metric])
        return dict(table)
    sample_files = sorted((folder / "samples").glob("*.jsonl"))
    if not sample_files:
        raise FileNotFoundError(f"{folder}: no problems/*.jsonl or samples/*.jsonl: not an evaluation output")
    field = "passed" if metric == "avg" else "score"
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sample_files:
        bench = _benchmark_of(path)
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                sums[bench][row["id"]].append(float(row[field]))
    return {bench: {pid: sum(v) / len(v) for pid, v in rows.items()} for bench, rows in sums.items()}


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of the mean per-problem difference (candidate - champion).

    ``interval``: the two-sided percentile interval at ``confidence``; ``lower_bound``: the
    one-sided lower bound at ``confidence`` (the ``1 - confidence`` quantile of the resampled
    means); ``above_margin``: the fraction of resamples whose mean difference is > ``margin``.
    """

    problems: int
    candidate_mean: float
    champion_mean: float
    mean_difference: float
    interval: tuple[float, float]
    lower_bound: float
    above_margin: float
    margin: float
    confidence: float
    samples: int
    seed: int


def _resampled_means(diffs: np.ndarray, samples: int, seed: int, chunk_elems: int = 2_000_000) -> np.ndarray:
    """Means of ``samples`` resamples (with replacement) of ``diffs`` [n] -> [samples], in chunks
    of about ``chunk_elems`` drawn indices so memory stays small for large benchmarks."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    rows = max(1, chunk_elems // n)
    out = np.empty(samples)
    for start in range(0, samples, rows):
        stop = min(samples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # [rows, n]
        out[start:stop] = diffs[idx].mean(axis=1)
    return out


def paired_bootstrap(candidate: dict[str, float], champion: dict[str, float], samples: int = 10_000,
                     seed: int = 0, *, confidence: float = 0.95, margin: float = 0.0) -> BootstrapResult:
    """Paired bootstrap over the problems both tables score (Efron & Tibshirani 1993, ch. 13).

    With d_i = candidate_i - champion_i over the n common problems (sorted by id, so the result
    does not depend on dict order), each of ``samples`` resamples draws n problems with
    replacement and takes the mean of their d; the percentile interval and lower bound are
    quantiles of those means (numpy's linear interpolation), with a ``seed``-ed generator.

    Raises:
        ValueError: if the tables share no problem (naming both counts), or ``samples`` < 1, or
            ``confidence`` is not in (0, 1).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    common = sorted(set(candidate) & set(champion))
    if not common:
        raise ValueError(f"no common problems: the candidate scores {len(candidate)}, the champion "
                         f"{len(champion)}, none with the same id")
    cand = np.array([candidate[i] for i in common], dtype=float)
    champ = np.array([champion[i] for i in common], dtype=float)
    diffs = cand - champ
    if not diffs.any():  # exact tie: every resample is 0
        means = np.zeros(samples)
    else:
        means = _resampled_means(diffs, samples, seed)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(problems=len(common), candidate_mean=float(cand.mean()), champion_mean=float(champ.mean()),
                           mean_difference=float(diffs.mean()), interval=(float(low), float(high)),
                           lower_bound=float(np.quantile(means, alpha)), above_margin=float((means > margin).mean()),
                           margin=margin, confidence=confidence, samples=samples, seed=seed)


@dataclass(frozen=True)
class BenchmarkRow:
    """One gate benchmark: means over its paired problems (all the candidate's when there is no
    champion), their difference and its two-sided interval at the gate's confidence."""

    benchmark: str
    problems: int
    candidate: float
    champion: float | None = None
    difference: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class Decision:
    """The gate's verdict: ``promote``, a one-sentence ``reason``, per-benchmark ``rows`` and the
    ``pooled`` bootstrap over every gate problem (None when there was no champion)."""

    promote: bool
    reason: str
    gate: list[str]
    rows: list[BenchmarkRow]
    pooled: BootstrapResult | None
    first_champion: bool
    confidence: float
    min_improvement: float

    def to_dict(self) -> dict:
        """A JSON-able form (tags, artifacts)."""
        return asdict(self)


def _gate(candidate: dict[str, dict], champion: dict[str, dict] | None, spec: PromotionSpec) -> list[str]:
    """The gate benchmarks. Raises ValueError naming a gate benchmark a table lacks."""
    if spec.gate is not None:
        missing = [b for b in spec.gate if b not in candidate]
        if missing:
            raise ValueError(f"gate benchmark(s) {missing} not evaluated for the candidate "
                             f"(it has {sorted(candidate)})")
        if champion is not None and (missing := [b for b in spec.gate if b not in champion]):
            raise ValueError(f"gate benchmark(s) {missing} not evaluated for the champion (it has {sorted(champion)})")
        return list(spec.gate)
    if champion is None:
        return sorted(candidate)
    common = sorted(set(candidate) & set(champion))
    if not common:
        raise ValueError(f"the candidate ({sorted(candidate)}) and the champion ({sorted(champion)}) share no "
                         f"benchmark")
    return common


def decide(candidate_scores: dict[str, dict[str, float]], champion_scores: dict[str, dict[str, float]] | None,
           spec: PromotionSpec) -> Decision:
    """Promote the candidate iff the one-sided ``spec.confidence`` lower bound of the mean paired
    difference over every gate problem is above ``spec.min_improvement``.

    Gate benchmarks: ``spec.gate``, or every benchmark both evaluated. The pooled bootstrap pairs
    problems by ``<benchmark>/<id>``, so each problem weighs the same (a benchmark with more
    problems weighs more). No champion: the candidate is promoted as the first champion. An exact
    tie (every paired difference 0) keeps the champion.

    Raises:
        ValueError: a gate benchmark missing from a table, no common benchmark, or a gate
            benchmark with no common problem (naming it).
    """
    gate = _gate(candidate_scores, champion_scores, spec)
    if champion_scores is None:
        rows = [BenchmarkRow(b, len(candidate_scores[b]), float(np.mean(list(candidate_scores[b].values())))
                             if candidate_scores[b] else float("nan")) for b in gate]
        return Decision(True, "no champion yet: the candidate becomes the first champion", gate, rows, None, True,
                        spec.confidence, spec.min_improvement)
    rows = []
    pooled_cand: dict[str, float] = {}
    pooled_champ: dict[str, float] = {}
    for bench in gate:
        try:
            result = paired_bootstrap(candidate_scores[bench], champion_scores[bench], spec.bootstrap_samples,
                                      spec.seed, confidence=spec.confidence, margin=spec.min_improvement)
        except ValueError as e:
            raise ValueError(f"{bench}: {e}") from None
        rows.append(BenchmarkRow(bench, result.problems, result.candidate_mean, result.champion_mean,
                                 result.mean_difference, result.interval))
        pooled_cand.update({f"{bench}/{i}": v for i, v in candidate_scores[bench].items()})
        pooled_champ.update({f"{bench}/{i}": v for i, v in champion_scores[bench].items()})
    pooled = paired_bootstrap(pooled_cand, pooled_champ, spec.bootstrap_samples, spec.seed,
                              confidence=spec.confidence, margin=spec.min_improvement)
    tie = all(pooled_cand[i] == pooled_champ[i] for i in set(pooled_cand) & set(pooled_champ))
    return Decision(*_verdict(pooled, tie, gate, spec), gate, rows, pooled, False, spec.confidence,
                    spec.min_improvement)


def _verdict(pooled: BootstrapResult, tie: bool, gate: list[str], spec: PromotionSpec) -> tuple[bool, str]:
    where = f"{pooled.problems} problems of {', '.join(gate)}"
    if tie:
        return False, f"keep the champion: the candidate scores exactly the same on all {where}"
    bound = (f"the one-sided {spec.confidence:.0%} lower bound of the mean per-problem difference "
             f"({pooled.lower_bound:+.4f}; mean {pooled.mean_difference:+.4f} over {where})")
    if pooled.lower_bound > spec.min_improvement:
        return True, f"promote: {bound} is above the margin {spec.min_improvement:.4f}"
    return False, f"keep the champion: {bound} is not above the margin {spec.min_improvement:.4f}"


def _f(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def decision_markdown(decision: Decision) -> str:
    """The decision as markdown (for a Prefect markdown artifact): verdict, reason, a table of the
    gate benchmarks and the pooled row, and the bootstrap settings."""
    title = "Promote the candidate" if decision.promote else "Keep the champion"
    level = f"{decision.confidence:.0%}"
    lines = [f"### {title}", "", decision.reason[0].upper() + decision.reason[1:] + ".", "",
             f"| benchmark | problems | candidate | champion | difference | {level} interval |",
             "|---|---|---|---|---|---|"]
    for r in decision.rows:
        interval = f"[{r.interval[0]:+.3f}, {r.interval[1]:+.3f}]" if r.interval else "-"
        lines.append(f"| {r.benchmark} | {r.problems} | {_f(r.candidate)} | {_f(r.champion)} | "
                     f"{_f(r.difference, True)} | {interval} |")
    p = decision.pooled
    if p is not None:
        lines.append(f"| **pooled** | {p.problems} | {_f(p.candidate_mean)} | {_f(p.champion_mean)} | "
                     f"{_f(p.mean_difference, True)} | [{p.interval[0]:+.3f}, {p.interval[1]:+.3f}] |")
        lines += ["", f"One-sided {level} lower bound {p.lower_bound:+.4f} vs margin {decision.min_improvement:.4f}; "
                  f"{p.above_margin:.1%} of {p.samples:,} paired resamples (seed {p.seed}) above the margin."]
    return "\n".join(lines) + "\n"
