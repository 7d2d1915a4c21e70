"""Decontamination: n-gram overlap between training sets and benchmarks (design.md §1.6).

Texts are normalised (lower case, punctuation removed, whitespace collapsed) and cut into word
10-grams. A benchmark item's *distinctive* 10-grams are those that are not template phrases: a
10-gram is a template phrase when it occurs in at least ``template_min_docs`` documents across
all training and benchmark items (boilerplate such as "the first line of input contains ..."
that many code problems share). The item's score against a training item is the share of its
distinctive 10-grams found in that one training item; it is contaminated when its best score
reaches ``threshold``. Items with fewer than ``min_ngrams`` distinctive 10-grams are not scored
(too short to judge).

10-grams are kept as 64-bit hashes (blake2b), so memory stays near 8 bytes per distinct gram.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from posttrain.records import Record

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> list[str]:
    """Lower-cased words with punctuation replaced by spaces (the basis of every n-gram)."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngram_hashes(text: str, n: int = 10) -> set[int]:
    """The 64-bit hashes of the normalised word ``n``-grams of ``text`` (none if it is shorter)."""
    words = normalise(text)
    return {int.from_bytes(hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest(), "big")
            for i in range(len(words) - n + 1)}


def record_text(record: Record) -> str:
    """The text compared for a record: its problem statement (``meta["problem"]``) or its prompt."""
    return str(record.meta.get("problem") or record.prompt)


@dataclass
class Match:
    """One contaminated benchmark item: its best training match and the overlap share in [0, 1]."""

    benchmark: str
    benchmark_id: str
    training_source: str
    training_id: str
    share: float
    shared: int
    distinctive: int
    benchmark_text: str = ""
    training_text: str = ""


@dataclass
class Report:
    """Per (training source, benchmark) pair: items scored and contaminated, with examples."""

    n: int
    threshold: float
    template_min_docs: int
    template_ngrams: int
    matches: list[Match] = field(default_factory=list)
    scored: dict[str, int] = field(default_factory=dict)

    def pairs(self) -> list[dict]:
        """Rows ``{training, benchmark, contaminated, examples}`` sorted by count (Prefect table)."""
        grouped: dict[tuple[str, str], list[Match]] = defaultdict(list)
        for m in self.matches:
            grouped[(m.training_source, m.benchmark)].append(m)
        rows = [{"training": t, "benchmark": b, "contaminated": len(ms), "benchmark_items": self.scored.get(b, 0),
                 "examples": "; ".join(f"{m.benchmark_id} ~ {m.training_id} ({m.share:.2f})" for m in ms[:3])}
                for (t, b), ms in grouped.items()]
        return sorted(rows, key=lambda r: (-r["contaminated"], r["training"], r["benchmark"]))

    def contaminated_training_ids(self) -> set[str]:
        """Training record ids that match at least one benchmark item."""
        return {m.training_id for m in self.matches}


def find_contamination(training: Mapping[str, Sequence[Record]], benchmarks: Mapping[str, Sequence[Record]],
                       n: int = 10, threshold: float = 0.5, template_min_docs: int = 20,
                       min_ngrams: int = 3, keep_text: bool = True) -> Report:
    """Score every benchmark item against every training item by distinctive ``n``-gram overlap.

    Args:
        training: training source name -> records.
        benchmarks: benchmark name -> records.
        n: the n of the word n-grams (10).
        threshold: a benchmark item is contaminated by a training item sharing at least this
            share of its distinctive n-grams.
        template_min_docs: an n-gram present in at least this many documents (training and
            benchmark items together) is a template phrase and ignored.
        min_ngrams: benchmark items with fewer distinctive n-grams are not scored.
        keep_text: copy both texts (first 300 characters) into each match, for reports.

    Returns:
        A :class:`Report`; its ``matches`` hold each contaminated benchmark item once per
        training source (its best training item there).
    """
    train_grams = {(src, r.id): ngram_hashes(record_text(r), n) for src, recs in training.items() for r in recs}
    bench_grams = {(b, r.id): ngram_hashes(record_text(r), n) for b, recs in benchmarks.items() for r in recs}
    df: Counter = Counter()
    for grams in list(train_grams.values()) + list(bench_grams.values()):
        df.update(grams)
    template = {g for g, c in df.items() if c >= template_min_docs}
    index: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for key, grams in train_grams.items():
        for g in grams - template:
            index[g].append(key)
    texts = {(src, r.id): record_text(r) for src, recs in training.items() for r in recs} if keep_text else {}
    btexts = {(b, r.id): record_text(r) for b, recs in benchmarks.items() for r in recs} if keep_text else {}
    report = Report(n=n, threshold=threshold, template_min_docs=template_min_docs, template_ngrams=len(template))
    for (bench, bid), grams in bench_grams.items():
        distinctive = grams - template
        if len(distinctive) < min_ngrams:
            continue
        report.scored[bench] = report.scored.get(bench, 0) + 1
        hits: Counter = Counter()
        for g in distinctive:
            hits.update(index.get(g, ()))
        best: dict[str, tuple[int, str]] = {}
        for (src, tid), count in hits.items():
            if count > best.get(src, (0, ""))[0]:
                best[src] = (count, tid)
        for src, (count, tid) in sorted(best.items()):
            share = count / len(distinctive)
            if share >= threshold:
                report.matches.append(Match(bench, bid, src, tid, share, count, len(distinctive),
                                            btexts.get((bench, bid), "")[:300], texts.get((src, tid), "")[:300]))
    return report


# ------------------------------------------------------------------------------ a recipe's training data
def training_specs(recipe) -> list:
    """Every data spec the recipe's training stages read (SFT, RL, distillation, instruct prompts)."""
    stages = [recipe.sft_stage1, recipe.sft_stage2, recipe.rl_math, recipe.rl_code, recipe.rl_stem, recipe.distill]
    specs = [s for stage in stages for s in stage.data]
    return specs + list(recipe.instruct_rl.data) + list(recipe.instruct_rl.prompts.sources)


def benchmark_names(cfg) -> list[str]:
    """The benchmarks to check against: ``cfg.benchmarks``, or every registered evaluation source."""
    from posttrain.data import registered_sources

    if cfg.benchmarks is not None:
        return list(cfg.benchmarks)
    return registered_sources("eval")


def check_recipe(recipe, data_root: str | None, store) -> dict:
    """Decontaminate a recipe's training sources against the benchmarks (design.md §1.6).

    Each training source is loaded whole (no ``limit``; its ``data_root``, ``mapping`` and
    ``where`` kept) and scored with :func:`find_contamination`. User-supplied benchmarks that
    were not supplied (GPQA-Diamond) are left out unless ``benchmarks`` names them. The report
    is stored once per content key (sources, benchmarks compared, settings) at
    ``decontamination/<key>.json`` and reused.

    Returns:
        ``{"key", "uri", "action", "dropped": {source: [record ids]}, "pairs": [rows],
        "examples": [...], "settings"}``.

    Raises:
        ValueError: with ``action: fail``, naming each contaminated (training, benchmark) pair.
    """
    import json

    from posttrain.config import config_hash
    from posttrain.data import load_mixture
    from posttrain.data.errors import UserFileMissing

    cfg = recipe.decontamination
    sources: dict[str, dict] = {}
    for spec in training_specs(recipe):
        sources.setdefault(spec.source, spec.model_dump(mode="json", exclude={"limit"}))
    evaluation = {}
    for name in benchmark_names(cfg):
        try:
            evaluation[name] = load_mixture([{"source": name}], data_root)
        except UserFileMissing:  # a user-supplied benchmark nobody supplied: nothing to compare with
            if cfg.benchmarks is not None:
                raise
    benchmarks = sorted(evaluation)
    settings = {"ngram": cfg.ngram, "threshold": cfg.threshold, "template_min_docs": cfg.template_min_docs,
                "min_ngrams": cfg.min_ngrams}
    key = config_hash({"sources": sources, "benchmarks": benchmarks, "settings": settings,
                       "data_root": data_root})[:24]
    rel = f"decontamination/{key}.json"
    if store.exists(rel):
        report = store.get_json(rel)
    else:
        training = {name: load_mixture([spec], data_root) for name, spec in sources.items()}
        found = find_contamination(training, evaluation, cfg.ngram, cfg.threshold, cfg.template_min_docs,
                                   cfg.min_ngrams)
        dropped: dict[str, list[str]] = {}
        for m in found.matches:
            dropped.setdefault(m.training_source, [])
            if m.training_id not in dropped[m.training_source]:
                dropped[m.training_source].append(m.training_id)
        report = {"key": key, "settings": settings, "training_sources": sorted(sources), "benchmarks": benchmarks,
                  "template_ngrams": found.template_ngrams, "scored": found.scored, "pairs": found.pairs(),
                  "dropped": {s: sorted(ids) for s, ids in sorted(dropped.items())},
                  "examples": [m.__dict__ for m in found.matches[:50]]}
        store.put_json(rel, json.loads(json.dumps(report)))
    report = {**report, "uri": store.uri(rel), "action": cfg.action}
    if cfg.action == "fail" and report["pairs"]:
        lines = [f"{r['training']} ~ {r['benchmark']}: {r['contaminated']} items (e.g. {r['examples']})"
                 for r in report["pairs"]]
        raise ValueError("training data overlaps benchmarks (decontamination.action is 'fail'; 'drop' removes "
                         "the items instead):\n  " + "\n  ".join(lines) + f"\nreport: {report['uri']}")
    return report
