"""Math sources: GSM8K, MATH, AIME, HMMT, IMO-AnswerBench (verifier "math", reference ``answer``).

Every prompt is ``math_prompt(problem)``; ``meta["problem"]`` holds the raw problem text.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from posttrain.data.prompts import gsm8k_solution, math_prompt, math_solution
from posttrain.data.readers import Row, read_csv, read_json_array, read_jsonl, short_repr
from posttrain.data.sources import note_skipped, register_source
from posttrain.records import Record, Reference


def math_record(
    source: str, key: str, problem: str, answer: str, solution: str | None = None, **meta: Any
) -> Record:
    """A math record: id ``<source>/<key>``, prompt ``math_prompt(problem)``, reference ``answer``.

    ``solution`` (already formatted, ending in ``\\boxed{answer}``) becomes ``reference.solution``;
    ``meta`` gets ``problem`` plus the keyword arguments whose value is not None.
    """
    return Record(
        id=f"{source}/{key}",
        domain="math",
        prompt=math_prompt(problem),
        verifier="math",
        reference=Reference(answer=answer, solution=solution),
        source=source,
        meta={"problem": problem.strip(), **{k: v for k, v in meta.items() if v is not None}},
    )


def _aime_answer(answer: str) -> str:
    # AIME answers are integers 0-999; some files write them with leading zeros ("051"). ASCII
    # digits only, stripped as text: int() refuses "²" (isdigit) and 4300+ digits.
    return (answer.lstrip("0") or "0") if answer.isascii() and answer.isdigit() else answer


# ---------------------------------------------------------------- GSM8K


def _gsm8k(rows: Iterable[Row], source: str) -> list[Record]:
    records = []
    for i, row in enumerate(rows):
        split = gsm8k_solution(row.text("answer"))
        if split is None:
            raise row.error("answer", "no '#### <answer>' line")
        solution, answer = split
        records.append(math_record(source, str(i), row.text("question"), answer, solution))
    return records


@register_source("gsm8k_train", files=["train/gsm8k_train.jsonl"], split="train")
def gsm8k_train(data_root: Path) -> list[Record]:
    """GSM8K train split (7,473): grade-school word problems, integer answers, worked solutions."""
    return _gsm8k(read_jsonl(data_root / "train/gsm8k_train.jsonl"), "gsm8k_train")


@register_source("gsm8k_test", files=["benchmarks/gsm8k_test.jsonl"], split="eval")
def gsm8k_test(data_root: Path) -> list[Record]:
    """GSM8K test split (1,319)."""
    return _gsm8k(read_jsonl(data_root / "benchmarks/gsm8k_test.jsonl"), "gsm8k_test")


# ---------------------------------------------------------------- MATH


def _level(row: Row, field: str) -> int | None:
    value = row.raw(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"(?:Level\s*)?([0-9]{1,4}|\?)", str(value).strip())
    if match is None:
        raise row.error(field, f"expected 'Level N' or N, got {short_repr(value)}")
    return None if match.group(1) == "?" else int(match.group(1))  # MATH train has 2 "Level ?"


@register_source("math_train", files=["train/math_train.jsonl"], split="train")
def math_train(data_root: Path) -> list[Record]:
    """MATH train split (7,500 rows) with worked solutions; meta ``type`` (subject) and ``level`` (1-5).

    Skipped: rows with an empty answer (two number-theory rows whose solution says ``\\boxed{}``).
    """
    records, skipped = [], Counter()
    for row in read_jsonl(data_root / "train/math_train.jsonl"):
        if row.raw("answer") == "":
            skipped["empty_answer"] += 1
            continue
        answer = row.answer("answer")
        key = row.text("unique_id").removesuffix(".json").removeprefix("train/")
        solution = math_solution(row.text("solution"), answer)
        meta = {"type": row.text("type"), "level": _level(row, "level")}
        records.append(math_record("math_train", key, row.text("problem"), answer, solution, **meta))
    note_skipped("math_train", skipped)
    return records


@register_source("math500", files=["benchmarks/math500.jsonl"], split="eval")
def math500(data_root: Path) -> list[Record]:
    """MATH-500 (500): the MATH test subset of "Let's Verify Step by Step"; meta ``type``, ``level``."""
    records = []
    for row in read_jsonl(data_root / "benchmarks/math500.jsonl"):
        answer = row.answer("answer")
        key = row.text("unique_id").removesuffix(".json").removeprefix("test/")
        solution = math_solution(row.text("solution"), answer)
        meta = {"type": row.text("subject"), "level": _level(row, "level")}
        records.append(math_record("math500", key, row.text("problem"), answer, solution, **meta))
    return records


# ---------------------------------------------------------------- competitions


@register_source("aime_1983_2023", files=["train/aime_1983_2023.json"], split="train")
def aime_1983_2023(data_root: Path) -> list[Record]:
    """AIME 1983-2023 (975) with AoPS solutions; meta ``year``, ``aime_number``, ``problem_number``, ``difficulty``."""
    records = []
    for row in read_json_array(data_root / "train/aime_1983_2023.json"):
        year, exam, number = row.integer("year"), row.integer("aime_number"), row.integer("problem_number")
        answer = _aime_answer(row.answer("answer"))
        solution = row.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise row.error("solution", f"expected a string, got {type(solution).__name__}")
        difficulty = row.get("difficulty")
        if isinstance(difficulty, int) and not isinstance(difficulty, bool) and abs(difficulty) > 10**300:
            raise row.error("difficulty", "expected a number float() can hold")
        records.append(
            math_record(
                "aime_1983_2023",
                f"{year}-{exam}-{number}",
                row.text("problem"),
                answer,
                math_solution(solution, answer) if solution and solution.strip() else None,
                year=year,
                aime_number=exam,
                problem_number=number,
                difficulty=float(difficulty) if isinstance(difficulty, (int, float)) else None,
            )
        )
    return records


def _matharena(data_root: Path, rel: str, source: str, year: int) -> list[Record]:
    """Rows of the MathArena-style files: ``id``, ``problem``, ``answer`` (+ competition details)."""
    records = []
    for row in read_jsonl(data_root / rel):
        key = row.text("id")
        answer = row.answer("answer")
        if source.startswith("aime"):
            answer = _aime_answer(answer)
        meta = {
            "year": year,
            "competition": row.get("competition"),
            "part": row.get("part_inferred"),
            "problem_idx": row.get("problem_idx"),
            "has_png_figure": row.get("has_png_figure"),
        }
        records.append(math_record(source, key, row.text("problem"), answer, None, **meta))
    return records


@register_source("aime2024", files=["benchmarks/aime2024.jsonl"], split="eval")
def aime2024(data_root: Path) -> list[Record]:
    """AIME 2024 I+II (30); six problems reference a figure (meta ``has_png_figure``)."""
    return _matharena(data_root, "benchmarks/aime2024.jsonl", "aime2024", 2024)


@register_source("aime2025", files=["benchmarks/aime2025.jsonl"], split="eval")
def aime2025(data_root: Path) -> list[Record]:
    """AIME 2025 I+II (30)."""
    return _matharena(data_root, "benchmarks/aime2025.jsonl", "aime2025", 2025)


@register_source("aime2026", files=["benchmarks/aime2026.jsonl"], split="eval")
def aime2026(data_root: Path) -> list[Record]:
    """AIME 2026 I+II (30); meta ``part`` is the inferred exam (I or II)."""
    return _matharena(data_root, "benchmarks/aime2026.jsonl", "aime2026", 2026)


@register_source("hmmt_feb_2025", files=["benchmarks/hmmt_feb_2025.jsonl"], split="eval")
def hmmt_feb_2025(data_root: Path) -> list[Record]:
    """HMMT February 2025 (30): LaTeX answers (fractions, radicals, lists)."""
    return _matharena(data_root, "benchmarks/hmmt_feb_2025.jsonl", "hmmt_feb_2025", 2025)


@register_source("imo_answerbench", files=["benchmarks/imo_answerbench_v2.csv"], split="eval")
def imo_answerbench(data_root: Path) -> list[Record]:
    """IMO-AnswerBench v2 (400) short-answer olympiad problems; meta ``category``, ``subcategory``, ``origin``."""
    records = []
    for row in read_csv(data_root / "benchmarks/imo_answerbench_v2.csv"):
        records.append(
            math_record(
                "imo_answerbench",
                row.text("Problem ID").strip(),
                row.text("Problem"),
                row.answer("Short Answer"),
                None,
                category=row.get("Category"),
                subcategory=row.get("Subcategory"),
                origin=row.get("Source"),  # "IMO Shortlist 2021": the competition, not our loader
            )
        )
    return records
