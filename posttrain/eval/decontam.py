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
