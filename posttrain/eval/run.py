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


def run_benchmark(engine, spec: BenchmarkSpec, sampling, data_root: str | None, out_dir: Path, seed: int) -> dict:
    """Sample ``spec.k`` completions per problem of one benchmark, grade them, write samples JSONL.

    Returns the benchmark's figures (:func:`posttrain.eval.metrics.summarise`) plus ``seconds``
    and ``tokens``. Samples go to ``out_dir/samples/<name>.jsonl`` (prompt, completion, parsed
    answer, verdict, tokens).
    """
    from posttrain.data import load_source

    records = load_source(spec.name, data_root, limit=spec.limit, seed=seed)
    params = SamplingParams(n=spec.k, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens, seed=seed)
    start = time.monotonic()
    groups = engine.generate([r.chat() for r in records], params)
    correct, answers, tokens = [], [], 0
    path = out_dir / "samples" / f"{spec.name}.jsonl"
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
    figures = summarise(correct, answers)
    if records and all(r.verifier == "instruct" for r in records):
        from posttrain.verifiers.instruct import instruction_accuracies

        # IFEval's four accuracies over every sampled response (prompt_strict equals avg@k)
        figures.update(instruction_accuracies([v for group in verdict_groups for v in group]))
    figures.update(seconds=time.monotonic() - start, tokens=tokens, k=spec.k)
    return figures


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
