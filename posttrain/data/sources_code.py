"""Code sources (verifier "code", reference ``tests`` in the shapes of design.md §3).

- stdin/stdout: Codeforces, Code Jam (``[{input, output, checker?}]``), CodeContests
  (``{inputs, outputs}``), CodeNet (sample tests): prompt ``code_stdio_prompt``.
- functional: HumanEval, LeetCode (``{functional: program}``), MBPP (``{asserts, setup}``):
  prompt ``code_functional_prompt``.

LeetCode-style references also carry ``setup``: the LeetCodeDataset preamble (imports, and
``ListNode``/``TreeNode`` with their helpers) that must run before the candidate's code,
because LeetCode solutions use ``List[int]`` or ``Optional[ListNode]`` without defining them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from posttrain.data.prompts import TESTS_INTRO, code_functional_prompt, code_solution, code_stdio_prompt
from posttrain.data.readers import Row, read_json_array, read_jsonl
from posttrain.data.sources import note_skipped, register_source
from posttrain.records import Record, Reference

# LeetCodeDataset's import block (its rows' ``prompt`` field, minus class definitions).
LEETCODE_PREAMBLE = (
    "from typing import *\n\nfrom functools import *\nfrom collections import *\n"
    "from itertools import *\nfrom heapq import *\nfrom bisect import *\nfrom string import *\n"
    "from operator import *\nfrom math import *\nimport math\nimport datetime\ninf = float('inf')\n"
)
_LEETCODE_STARTER = re.compile(
    r"Please complete the following python code precisely:\s*```python\n(.*?)```", re.DOTALL
)
_LEETCODE_INTRO = (
    "Please solve the programming task below using a self-contained code snippet in a markdown code block."
)


def code_record(
    source: str, key: str, prompt: str, problem: str, tests: Any, solution: str | None, **meta: Any
) -> Record:
    """A code record: id ``<source>/<key>``; ``meta`` gets ``problem`` and the non-None keyword arguments."""
    return Record(
        id=f"{source}/{key}",
        domain="code",
        prompt=prompt,
        verifier="code",
        reference=Reference(tests=tests, solution=solution),
        source=source,
        meta={"problem": problem.strip(), **{k: v for k, v in meta.items() if v is not None}},
    )


def _io_tests(row: Row, field: str, checker: str | None = None) -> list[dict[str, str]]:
    tests = []
    for t in row.items(field):
        case = {"input": t.text("input", allow_empty=True), "output": t.text("output", allow_empty=True)}
        if checker:
            case["checker"] = checker
        tests.append(case)
    return tests


def _time_limit_s(statement: str) -> float | None:
    # Codeforces: "Time Limit: 2000 ms"; CodeContests: "Time Limit: {'seconds': 2, 'nanos': 0}".
    if m := re.search(r"Time Limit:\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*ms", statement):
        return float(m.group(1)) / 1000
    if m := re.search(r"Time Limit:\s*\{'seconds':\s*([0-9]{1,9}),\s*'nanos':\s*([0-9]{1,9})\}", statement):
        return int(m.group(1)) + int(m.group(2)) / 1e9
    return None


# ---------------------------------------------------------------- stdin/stdout


@register_source("codeforces", files=["benchmarks/codeforces.json"], split="eval")
def codeforces(data_root: Path) -> list[Record]:
    """Codeforces test set of DeepCoder/rLLM (408): stdin/stdout tests; meta ``time_limit_s``."""
    records = []
    for i, row in enumerate(read_json_array(data_root / "benchmarks/codeforces.json")):
        statement = row.text("problem")
        records.append(
            code_record("codeforces", str(i), code_stdio_prompt(statement), statement, _io_tests(row, "tests"),
                        None, time_limit_s=_time_limit_s(statement))
        )
    return records


@register_source("code_contests", files=["benchmarks/code_contests.json"], split="eval")
def code_contests(data_root: Path) -> list[Record]:
    """CodeContests test set of DeepCoder/rLLM (165): ``{inputs, outputs}`` tests; meta ``time_limit_s``."""
    records = []
    for i, row in enumerate(read_json_array(data_root / "benchmarks/code_contests.json")):
        statement = row.text("problem")
        tests = row.nested("tests")
        inputs, outputs = tests.str_list("inputs"), tests.str_list("outputs")
        if len(inputs) != len(outputs):
            raise tests.error("outputs", f"{len(outputs)} outputs for {len(inputs)} inputs")
        records.append(
            code_record("code_contests", str(i), code_stdio_prompt(statement), statement,
                        {"inputs": inputs, "outputs": outputs}, None, time_limit_s=_time_limit_s(statement))
        )
    return records


@register_source("codejam", files=["train/codejam.jsonl.gz"], split="train")
def codejam(data_root: Path) -> list[Record]:
    """Code Jam / Kick Start (732 rows) with hidden tests and float-tolerance checkers.

    Skipped: interactive problems, problems needing a custom judge, rows whose tests were all
    left out of the file (too large): none of them can be graded by output comparison.
    """
    records, skipped = [], Counter()
    for row in read_jsonl(data_root / "train/codejam.jsonl.gz"):
        if row.flag("interactive", default=False):
            skipped["interactive"] += 1
            continue
        if row.flag("custom_judge", default=False):
            skipped["custom_judge"] += 1
            continue
        tests = _io_tests(row, "tests", row.get("output_validator_flags")) if row.raw("tests") else []
        if not tests:
            skipped["no_tests"] += 1
            continue
        key = row.text("id")
        statement = row.text("statement").lstrip("-\n ")  # the converted HTML starts with a stray "-"
        year = re.search(r"/([0-9]{4})/", f"/{key}/")
        left_out = row.get("tests_left_out") or []
        if not isinstance(left_out, list):
            raise row.error("tests_left_out", f"expected a list, got {type(left_out).__name__}")
        records.append(
            code_record("codejam", key, code_stdio_prompt(statement), statement, tests, None,
                        competition=row.get("competition"), contest=row.get("source"), name=row.get("name"),
                        year=int(year.group(1)) if year else None, tests_left_out=len(left_out))
        )
    note_skipped("codejam", skipped)
    return records


@register_source("codenet", files=["train/codenet_samples.jsonl.gz"], split="train")
def codenet(data_root: Path) -> list[Record]:
    """Project CodeNet problems (3,394 rows) graded by their visible sample tests only.

    Skipped: ``maybe_special_judge`` rows (several outputs may be right, exact comparison would
    reject them) and rows without tests. Kept with a flag in meta: ``has_image``, ``non_english``.
    """
    records, skipped = [], Counter()
    for row in read_jsonl(data_root / "train/codenet_samples.jsonl.gz"):
        if row.flag("maybe_special_judge", default=False):
            skipped["maybe_special_judge"] += 1
            continue
        if not row.raw("tests"):
            skipped["no_tests"] += 1
            continue
        statement = row.text("statement")
        records.append(
            code_record("codenet", row.text("problem_id"), code_stdio_prompt(statement), statement,
                        _io_tests(row, "tests"), None, has_image=row.flag("has_image", default=False),
                        non_english=row.flag("non_english", default=False))
        )
    note_skipped("codenet", skipped)
    return records


# ---------------------------------------------------------------- functional


@register_source("humaneval", files=["benchmarks/humaneval.jsonl.gz"], split="eval")
def humaneval(data_root: Path) -> list[Record]:
    """HumanEval (164): complete a function from its signature and docstring; tests ``{functional}``."""
    records = []
    for row in read_jsonl(data_root / "benchmarks/humaneval.jsonl.gz"):
        task_id, starter, entry = row.text("task_id"), row.text("prompt"), row.text("entry_point")
        program = f"{row.text('test')}\ncheck({entry})\n"
        prompt = code_functional_prompt("Complete the following Python function.", starter)
        records.append(
            code_record("humaneval", task_id.rpartition("/")[2], prompt, starter, {"functional": program},
                        code_solution(starter + row.text("canonical_solution")), entry_point=entry, task_id=task_id)
        )
    return records


def _mbpp(data_root: Path, source: str, first: int, last: int) -> list[Record]:
    records = []
    for row in read_jsonl(data_root / "benchmarks/mbpp.jsonl"):
        task_id = row.integer("task_id")
        if not first <= task_id <= last:
            continue
        text, asserts = row.text("text"), row.str_list("test_list")
        setup = row.get("test_setup_code") or ""
        prompt = code_functional_prompt(text, "\n".join(asserts), intro=TESTS_INTRO)
        records.append(
            code_record(source, str(task_id), prompt, text, {"asserts": asserts, "setup": setup},
                        code_solution(row.text("code")), task_id=task_id)
        )
    return records


@register_source("mbpp_train", files=["benchmarks/mbpp.jsonl"], split="train")
def mbpp_train(data_root: Path) -> list[Record]:
    """MBPP train split (task_id 601-974, 374): the one training split inside ``benchmarks/``."""
    return _mbpp(data_root, "mbpp_train", 601, 974)


@register_source("mbpp_test", files=["benchmarks/mbpp.jsonl"], split="eval")
def mbpp_test(data_root: Path) -> list[Record]:
    """MBPP test split (task_id 11-510, 500); the prompt shows the asserts (they name the function)."""
    return _mbpp(data_root, "mbpp_test", 11, 510)


def _split_leetcode(text: str) -> tuple[str, str | None]:
    """(statement, starter code) of a LeetCode query ending in "Please complete ... ```python ...```"."""
    text = text.replace("\xa0", " ").removeprefix(_LEETCODE_INTRO).strip()
    match = _LEETCODE_STARTER.search(text)
    if match is None:
        return text, None
    return text[: match.start()].strip(), match.group(1)


@register_source("leetcode", files=["benchmarks/leetcode.json"], split="eval")
def leetcode(data_root: Path) -> list[Record]:
    """LeetCode test set of DeepCoder/rLLM (200): ``{functional, setup}`` tests, reference solutions."""
    records = []
    for i, row in enumerate(read_json_array(data_root / "benchmarks/leetcode.json")):
        statement, starter = _split_leetcode(row.text("problem"))
        program = row.nested("tests").text("functional")
        records.append(
            code_record("leetcode", str(i), code_functional_prompt(statement, starter), statement,
                        {"functional": program, "setup": LEETCODE_PREAMBLE}, code_solution(row.text("solutions")))
        )
    return records


@register_source("leetcode_train", files=["train/leetcode_train.jsonl.gz"], split="train")
def leetcode_train(data_root: Path) -> list[Record]:
    """LeetCodeDataset train (1,890): tests are the statement's examples only (a weak reward).

    ``setup`` is the row's own preamble (imports plus ``ListNode``/``TreeNode`` helpers).
    """
    records = []
    for row in read_jsonl(data_root / "train/leetcode_train.jsonl.gz"):
        task_id, entry = row.text("task_id"), row.text("entry_point")
        statement, starter = _split_leetcode(row.text("query"))
        meta = row.nested("meta")
        tests = {"functional": f"{row.text('test')}\n\ncheck({entry})\n", "setup": row.text("prompt")}
        records.append(
            code_record("leetcode_train", task_id, code_functional_prompt(statement, starter), statement, tests,
                        code_solution(row.text("completion")), difficulty=meta.get("difficulty"),
                        question_id=meta.get("question_id"), entry_point=entry)
        )
    return records
