"""Run benchmarks on a checkpoint: sample k completions per problem, verify, summarise, save samples."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from posttrain.config import BenchmarkSpec, EvalStage
from posttrain.engines import SamplingParams, open_engine
from posttrain.eval.metrics import summarise
from posttrain.verifiers.base import verify_groups

log = logging.getLogger(__name__)


def answer_key(details: dict) -> str | None:
    """The answer a verdict parsed (``extracted``, ``answer`` or ``chosen`` of its details), as a
    string; None when it found none. What maj@k and CLR vote on."""
    for field in ("extracted", "answer", "chosen"):
        if details.get(field) is not None:
            return str(details[field])
    return None


def default_k(name: str, records) -> int:
    """Samples per problem when a run names none (design.md §1.5): 64 for math (16 for
    IMO-AnswerBench), 16 for GPQA-Diamond, 8 for code; 4 for the rest (our choice). A user
    benchmark's own ``k`` (``posttrain.data.user_benchmarks``) comes first."""
    from posttrain.data.user_benchmarks import USER_K

    if name in USER_K:
        return USER_K[name]
    if name == "imo_answerbench" or name == "gpqa_diamond":
        return 16
    verifiers = {r.verifier for r in records}
    if verifiers == {"math"}:
        return 64
    if verifiers == {"code"}:
        return 8
    return 4


def record_date(record) -> str | None:
    """A record's date as ISO text (``contest_date``, ``date``, or ``year`` read as January 1), or None."""
    for field in ("contest_date", "date"):
        if record.meta.get(field):
            return str(record.meta[field])[:10]
    year = record.meta.get("year")
    return f"{int(year):04d}-01-01" if year not in (None, "") else None


def after_cutoff(records: list, cutoff: str, benchmark: str) -> list:
    """The records dated strictly after ``cutoff`` (an ISO date), for contamination-free
    time-split evaluation on contests held after a model's training data (3B §3).

    Raises:
        ValueError: if ``cutoff`` is not an ISO date, a record carries no date (naming it), or
            no problem is left.
    """
    import datetime

    try:
        day = datetime.date.fromisoformat(cutoff[:10]).isoformat()
    except ValueError:
        raise ValueError(f"{benchmark}: 'after' must be an ISO date like 2025-02-01, got {cutoff!r}") from None
    undated = [r.id for r in records if record_date(r) is None]
    if undated:
        raise ValueError(f"{benchmark}: {len(undated)} records carry no date (e.g. {undated[0]}), so it cannot be "
                         f"split by time")
    kept = [r for r in records if record_date(r) > day]
    if not kept:
        raise ValueError(f"{benchmark}: no problem dated after {day}")
    return kept


def benchmark_records(spec: BenchmarkSpec, data_root: str | None, seed: int) -> list:
    """The problems of one benchmark run: the time split (``after``) first, then ``limit``.

    Raises:
        UnknownSourceError: (a ``KeyError`` and a ``ValueError``) "unknown benchmark ...",
            listing the registered benchmarks, for a name that is not a registered source.
    """
    from posttrain.data import check_benchmark, load_source, subsample

    check_benchmark(spec.name)
    records = load_source(spec.name, data_root, limit=None if spec.after else spec.limit, seed=seed)
    if spec.after:
        records = subsample(after_cutoff(records, spec.after, spec.name), spec.limit, seed)
    return records


def benchmark_part(engine, spec: BenchmarkSpec, sampling, data_root: str | None, out_dir: Path, seed: int,
                   shard: tuple[int, int] = (0, 1)) -> dict:
    """Sample and grade shard ``i`` of ``n`` of a benchmark's problems (every n-th, from the i-th).

    Samples go to ``out_dir/samples/<name>.jsonl`` (or ``<name>.shard-<i>-of-<n>.jsonl``):
    prompt, completion, parsed answer, verdict, tokens; per-problem scores to ``out_dir/problems/``
    under the same name (:func:`write_problem_scores`). Returns the raw, JSON-able part that
    :func:`summarise_parts` merges: ``{"ids", "correct" [problems][k], "answers", "tokens",
    "seconds", "k", "seed", "instruct" (verdict details of instruction benchmarks, else None)}``.
    """
    i, n = shard
    records = benchmark_records(spec, data_root, seed)
    k = spec.k or default_k(spec.name, records)
    records = records[i::n]
    params = SamplingParams(n=k, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens, seed=seed)
    start = time.monotonic()
    groups = engine.generate([r.chat() for r in records], params) if records else []
    correct, answers, tokens = [], [], 0
    path = out_dir / "samples" / (f"{spec.name}.jsonl" if n == 1 else f"{spec.name}.shard-{i}-of-{n}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    verdict_groups = verify_groups(records, groups)
    with path.open("w") as f:
        for record, group, verdicts in zip(records, groups, verdict_groups):
            row_c, row_a = [], []
            for c, verdict in zip(group, verdicts):
                row_c.append(bool(verdict.passed))
                row_a.append(answer_key(verdict.details))
                tokens += c.num_tokens
                f.write(json.dumps({"id": record.id, "prompt": record.prompt, "completion": c.text,
                                    "answer": row_a[-1], "score": verdict.score, "passed": verdict.passed,
                                    "tokens": c.num_tokens, "finish_reason": c.finish_reason}) + "\n")
            correct.append(row_c)
            answers.append(row_a)
    write_problem_scores(out_dir / "problems" / path.name, records, verdict_groups)
    instruct = ([v.details for group in verdict_groups for v in group]
                if records and all(r.verifier == "instruct" for r in records) else None)
    return {"ids": [r.id for r in records], "correct": correct, "answers": answers, "tokens": tokens,
            "seconds": time.monotonic() - start, "k": k, "seed": seed, "instruct": instruct}


def write_problem_scores(path: Path, records, verdict_groups) -> None:
    """Write one JSON line per problem: ``{"id", "k", "correct", "avg", "score"}``.

    ``correct`` counts the problem's k samples that passed, ``avg`` = correct / k (the problem's
    term of avg@k), ``score`` the mean verifier score (partial credit) of the k samples. The
    nightly promotion gate pairs these per problem (``posttrain.promotion.problem_scores``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record, verdicts in zip(records, verdict_groups):
            k = len(verdicts)
            passed = sum(bool(v.passed) for v in verdicts)
            f.write(json.dumps({"id": record.id, "k": k, "correct": passed, "avg": passed / k if k else 0.0,
                                "score": sum(float(v.score) for v in verdicts) / k if k else 0.0}) + "\n")


def summarise_parts(parts: list[dict]) -> dict:
    """A benchmark's figures from its parts (shards in any order): avg@k, pass@k, maj@k, stderr
    (:func:`posttrain.eval.metrics.summarise`), IFEval's accuracies for instruction benchmarks,
    ``tokens`` and ``seconds`` summed, ``k`` and the sampling ``seed``.

    Raises:
        ValueError: if the parts hold no problem or disagree on ``k``.
    """
    if len({p["k"] for p in parts}) != 1:
        raise ValueError(f"shards disagree on k: {[p['k'] for p in parts]}")
    correct = [row for p in parts for row in p["correct"]]
    if not correct:
        raise ValueError("no problem was evaluated")
    figures = summarise(correct, [row for p in parts for row in p["answers"]])
    if all(p["instruct"] is not None for p in parts):
        from posttrain.verifiers.instruct import instruction_accuracies

        # IFEval's four accuracies over every sampled response (prompt_strict equals avg@k)
        figures.update(instruction_accuracies([d for p in parts for d in p["instruct"]]))
    figures.update(seconds=sum(p["seconds"] for p in parts), tokens=sum(p["tokens"] for p in parts), k=parts[0]["k"],
                   seed=parts[0].get("seed", 0))
    return figures


def run_benchmark(engine, spec: BenchmarkSpec, sampling, data_root: str | None, out_dir: Path, seed: int) -> dict:
    """Sample ``spec.k`` (or :func:`default_k`) completions per problem of one benchmark, grade
    them, write samples JSONL to ``out_dir/samples/<name>.jsonl``; returns its figures
    (:func:`summarise_parts`)."""
    return summarise_parts([benchmark_part(engine, spec, sampling, data_root, out_dir, seed)])


def evaluate_model(model_dir: Path, cfg: EvalStage, data_root: str | None, out_dir: Path, seed: int,
                   log_metrics=None) -> dict:
    """Evaluate one checkpoint on every benchmark of ``cfg``; write ``eval_table.json`` and ``.md``,
    and the plots ``pass_at_k.png`` and ``lengths.png``.

    ``log_metrics(dict)`` receives ``eval/<benchmark>/<metric>`` keys (design.md §3).
    Returns ``{benchmark: figures}``.
    """
    engine = open_engine(cfg.sampling.engine, model_dir, batch_size=cfg.sampling.batch_size)
    table: dict[str, dict] = {}
    try:
        for spec in cfg.benchmarks:
            figures = run_benchmark(engine, spec, cfg.sampling, data_root, out_dir, seed)
            table[spec.name] = figures
            log.info("%s: %s", spec.name, figures)
            if log_metrics:
                log_metrics({f"eval/{spec.name}/{k}": v for k, v in figures.items()})
    finally:
        engine.close()
    (out_dir / "eval_table.json").write_text(json.dumps(table, indent=2))
    (out_dir / "eval_table.md").write_text(format_table(table))
    if table:
        from posttrain.eval.report import length_histogram_png, pass_at_k_png

        pass_at_k_png(table, out_dir / "pass_at_k.png")
        length_histogram_png(out_dir / "samples", out_dir / "lengths.png")
    return table


def format_table(table: dict[str, dict]) -> str:
    """A markdown table: benchmark, problems, k, avg@k ± stderr, pass@k, maj@k, and IFEval's
    instruction-level strict accuracy for instruction benchmarks (their prompt-level strict
    accuracy is avg@k)."""
    lines = ["| benchmark | problems | k | avg@k | ± stderr | pass@k | maj@k | instruction strict |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in table.items():
        k = f["k"]
        maj, inst = f.get(f"maj_at_{k}"), f.get("instruction_strict")
        lines.append(f"| {name} | {f['problems']} | {k} | {f[f'avg_at_{k}']:.3f} | {f['stderr']:.3f} | "
                     f"{f[f'pass_at_{k}']:.3f} | {'-' if maj is None else f'{maj:.3f}'} | "
                     f"{'-' if inst is None else f'{inst:.3f}'} |")
    return "\n".join(lines) + "\n"
