"""STEM multiple-choice sources: ARC, OpenBookQA (training) and MMLU-Pro STEM (evaluation).

Domain "stem", verifier "choice"; reference ``choices`` (``[{label, text}]``) and ``answer``
(a label). Labels are kept as the data has them: some ARC rows use 1-4 instead of A-D.
``meta["problem"]`` is the question followed by its options, one ``"A. text"`` line each, so
decontamination sees the options too.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from posttrain.data.prompts import choice_prompt, choice_solution
from posttrain.data.readers import Row, read_jsonl
from posttrain.data.sources import register_source
from posttrain.records import Choice, Record, Reference

_LETTERS = string.ascii_uppercase


def choice_record(source: str, key: str, question: str, choices: list[Choice], answer: str, row: Row,
                  answer_field: str, **meta: Any) -> Record:
    """A multiple-choice record; ``answer`` must be one of the choice labels.

    Raises:
        DataError: naming ``answer_field`` of ``row`` if ``answer`` is not a label.
    """
    by_label = {c.label: c for c in choices}
    if answer not in by_label:
        raise row.error(answer_field, f"answer {answer!r} is not one of the labels {list(by_label)}")
    options = "\n".join(f"{c.label}. {c.text.strip()}" for c in choices)
    return Record(
        id=f"{source}/{key}",
        domain="stem",
        prompt=choice_prompt(question, choices),
        verifier="choice",
        reference=Reference(choices=choices, answer=answer, solution=choice_solution(answer, by_label[answer].text)),
        source=source,
        meta={"problem": f"{question.strip()}\n{options}", **{k: v for k, v in meta.items() if v is not None}},
    )


def _ai2_mcq(data_root: Path, rel: str, source: str) -> list[Record]:
    """ARC / OpenBookQA JSONL: ``{id, question: {stem, choices: [{text, label}]}, answerKey}``."""
    records = []
    for row in read_jsonl(data_root / rel):
        question = row.nested("question")
        choices = [Choice(label=c.text("label").strip(), text=c.text("text")) for c in question.items("choices")]
        records.append(choice_record(source, row.text("id"), question.text("stem"), choices,
                                     row.text("answerKey").strip(), row, "answerKey"))
    return records


@register_source("arc_challenge_train", files=["train/stem/ARC-Challenge-Train.jsonl"], split="train")
def arc_challenge_train(data_root: Path) -> list[Record]:
    """ARC-Challenge train (1,119) grade-school science questions, 3-5 options."""
    return _ai2_mcq(data_root, "train/stem/ARC-Challenge-Train.jsonl", "arc_challenge_train")


@register_source("arc_easy_train", files=["train/stem/ARC-Easy-Train.jsonl"], split="train")
def arc_easy_train(data_root: Path) -> list[Record]:
    """ARC-Easy train (2,251)."""
    return _ai2_mcq(data_root, "train/stem/ARC-Easy-Train.jsonl", "arc_easy_train")


@register_source("openbookqa_train", files=["train/stem/OpenBookQA_train.jsonl"], split="train")
def openbookqa_train(data_root: Path) -> list[Record]:
    """OpenBookQA train (4,957) elementary science questions, 4 options."""
    return _ai2_mcq(data_root, "train/stem/OpenBookQA_train.jsonl", "openbookqa_train")


@register_source("mmlu_pro_stem", files=["benchmarks/mmlu_pro_stem.jsonl"], split="eval")
def mmlu_pro_stem(data_root: Path) -> list[Record]:
    """MMLU-Pro test split, STEM categories (5,878), up to 10 options A-J; meta ``category``, ``src``."""
    records = []
    for row in read_jsonl(data_root / "benchmarks/mmlu_pro_stem.jsonl"):
        options = row.str_list("options")
        if len(options) > len(_LETTERS):
            raise row.error("options", f"{len(options)} options")
        choices = [Choice(label=_LETTERS[i], text=text) for i, text in enumerate(options)]
        records.append(choice_record("mmlu_pro_stem", str(row.integer("question_id")), row.text("question"),
                                     choices, row.text("answer").strip(), row, "answer",
                                     category=row.get("category"), src=row.get("src")))
    return records


GPQA_FILE = "benchmarks/gpqa_diamond.csv"
GPQA_HOW = ("GPQA-Diamond is not shipped: its authors ask that it not be redistributed in plain text. Download "
            "the GPQA release (https://github.com/idavidrein/gpqa, dataset.zip, password in its README), and copy "
            "gpqa_diamond.csv (columns 'Question', 'Correct Answer', 'Incorrect Answer 1'-'3', 'Record ID') to "
            f"<data root>/{GPQA_FILE}.")


@register_source("gpqa_diamond", files=[GPQA_FILE], split="eval")
def gpqa_diamond(data_root: Path) -> list[Record]:
    """GPQA-Diamond (198 graduate-level science questions), from a file the user supplies.

    The four options are ordered by a hash of the record id and option text, so the correct
    answer's letter varies and is the same on every machine.

    Raises:
        UserFileMissing: saying where to get the file and where to put it.
    """
    import hashlib

    from posttrain.data.errors import UserFileMissing
    from posttrain.data.readers import read_csv

    path = data_root / GPQA_FILE
    if not path.is_file():
        raise UserFileMissing(str(path), GPQA_HOW)
    records = []
    for row in read_csv(path):
        key = row.text("Record ID")
        texts = [row.text("Correct Answer")] + [row.text(f"Incorrect Answer {i}") for i in (1, 2, 3)]
        order = sorted(texts, key=lambda t: hashlib.sha256(f"{key}:{t}".encode()).hexdigest())
        choices = [Choice(label=_LETTERS[i], text=t.strip()) for i, t in enumerate(order)]
        answer = _LETTERS[order.index(texts[0])]
        records.append(choice_record("gpqa_diamond", key, row.text("Question"), choices, answer, row, "Correct Answer",
                                     subdomain=row.data.get("High-level domain")))
    return records
