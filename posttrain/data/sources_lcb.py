"""LiveCodeBench v6 from a file the user supplies (its tests are not shipped here).

Release format (``livecodebench/code_generation_lite``, one JSON object per line):
``question_id``, ``question_content``, ``starter_code``, ``platform``, ``contest_date``,
``difficulty``, ``public_test_cases`` (a JSON list of ``{input, output, testtype}``),
``private_test_cases`` (a JSON list, or that JSON string pickled, zlib-compressed and base64
encoded), ``metadata`` (JSON with ``func_name`` for functional problems). Functional tests carry
one JSON value per line of ``input`` (the arguments) and the expected value as JSON in
``output``; they become one ``check(candidate)`` program on ``Solution().<func_name>``.

The private tests are unpickled with an unpickler that refuses every class, so a crafted file
cannot run code: only the plain string (or list/dict) the format stores comes back.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

from posttrain.data.errors import UserFileMissing
from posttrain.data.prompts import code_functional_prompt, code_stdio_prompt
from posttrain.data.readers import Row, read_jsonl
from posttrain.data.sources import register_source
from posttrain.data.sources_code import LEETCODE_PREAMBLE, code_record
from posttrain.records import Record

LCB_FILE = "benchmarks/livecodebench_v6.jsonl"
LCB_HOW = ("LiveCodeBench's tests are not shipped. Download the release files of "
           "livecodebench/code_generation_lite (test.jsonl ... test6.jsonl for release v6), concatenate them "
           f"into one JSONL file and put it at <data root>/{LCB_FILE}; restrict to recent contests with a "
           "benchmark 'after' date.")


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - refuse every global: data only
        raise pickle.UnpicklingError(f"refusing {module}.{name}: private tests hold plain data")


def decode_tests(value: Any, row: Row, field: str) -> list[dict]:
    """A test list from a JSON list, a JSON string, or base64(zlib(pickle(JSON string))).

    Raises:
        DataError: naming the row and field when none of the encodings applies.
    """
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise row.error(field, f"expected tests as a list or a string, got {type(value).__name__}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        inner = _DataOnly(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        return json.loads(inner) if isinstance(inner, (str, bytes)) else inner
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad field
        raise row.error(field, f"tests are neither JSON nor base64(zlib(pickle)) ({type(err).__name__})") from None


def _functional_program(tests: list[dict], func_name: str) -> str:
    lines = ["import json", "", "def check(candidate):"]
    for t in tests:
        args = [line for line in t["input"].split("\n") if line.strip()]
        lines.append(f"    assert candidate(*[json.loads(a) for a in {args!r}]) == json.loads({t['output']!r})")
    lines += ["", f"check(Solution().{func_name})"]
    return "\n".join(lines) + "\n"


@register_source("livecodebench_v6", files=[LCB_FILE], split="eval")
def livecodebench_v6(data_root: Path) -> list[Record]:
    """LiveCodeBench v6 problems with public and private tests, from the user's release file.

    Raises:
        UserFileMissing: saying where to get the file and where to put it.
        DataError: naming the line and field of a malformed row.
    """
    path = data_root / LCB_FILE
    if not path.is_file():
        raise UserFileMissing(str(path), LCB_HOW)
    records = []
    for row in read_jsonl(path):
        tests = (decode_tests(row.raw("public_test_cases"), row, "public_test_cases")
                 + decode_tests(row.raw("private_test_cases"), row, "private_test_cases"))
        if not tests:
            raise row.error("public_test_cases", "no tests")
        statement = row.text("question_content")
        starter = row.get("starter_code") or ""
        meta = dict(platform=row.get("platform"), contest_date=row.get("contest_date"), difficulty=row.get("difficulty"))
        if all(t.get("testtype") == "functional" for t in tests):
            func = json.loads(row.get("metadata") or "{}").get("func_name")
            if not func:
                raise row.error("metadata", "functional tests need metadata.func_name")
            reference = {"functional": _functional_program(tests, func), "setup": LEETCODE_PREAMBLE}
            prompt = code_functional_prompt(statement, starter)
        else:
            reference = [{"input": t["input"], "output": t["output"]} for t in tests]
            prompt = code_stdio_prompt(statement)
        records.append(code_record("livecodebench_v6", row.text("question_id"), prompt, statement, reference, None,
                                   **meta))
    return records
