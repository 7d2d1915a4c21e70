"""Records from a Hugging Face dataset in hub layout (``hf://<dataset-id-or-local-dir>`` roots).

A ``HubMapping`` says which columns hold the id, prompt, answer and (optionally) solution, and
which domain, verifier and prompt template the records get. The dataset is read with
``datasets.load_dataset(path_or_id, split=...)``: a local folder in hub layout
(``data/train-00000-of-00001.parquet``) or, where the hub is reachable or cached, a dataset id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, field_validator

from posttrain.data.errors import DataError
from posttrain.data.prompts import NAMED_TEMPLATES
from posttrain.data.readers import Row, read_csv, read_json_array, read_jsonl
from posttrain.records import Domain, Record, Reference

# Verifiers whose reference is one column: ``answer`` (a string) or, for code, ``tests``.
_ANSWER_VERIFIERS = {"math", "synthetic_digits"}
_TESTS_VERIFIERS = {"code"}


class HubMapping(BaseModel):
    """How the columns of a hub dataset map to ``Record`` fields.

    ``answer_field`` fills ``reference.answer`` (verifiers "math", "synthetic_digits") or
    ``reference.tests`` (verifier "code": a JSON string or a list/dict column). ``template`` is
    a name in ``prompts.NAMED_TEMPLATES`` ("math", "code_stdio", "code_functional", "raw") or a
    format string with a ``{problem}`` placeholder; None uses the prompt column unchanged.
    """

    model_config = ConfigDict(extra="forbid")
    split: str = "train"
    prompt_field: str
    answer_field: str
    domain: Domain
    verifier: str
    id_field: str
    solution_field: str | None = None
    template: str | None = None

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in NAMED_TEMPLATES and "{problem}" not in value:
            raise ValueError(f"template must be one of {sorted(NAMED_TEMPLATES)} or contain '{{problem}}'")
        return value

    @field_validator("verifier")
    @classmethod
    def _supported_verifier(cls, value: str) -> str:
        supported = sorted(_ANSWER_VERIFIERS | _TESTS_VERIFIERS)
        if value in supported:
            return value
        from posttrain.verifiers.base import registered_verifiers  # only on this error path: imports sympy

        if value not in registered_verifiers():
            raise ValueError(f"unknown verifier {value!r}; registered: {', '.join(registered_verifiers())} "
                             f"(a mapping supports {', '.join(supported)})")
        raise ValueError(f"verifier {value!r} needs more than one reference column; a mapping supports "
                         f"{', '.join(supported)}")

    def render_prompt(self, problem: str) -> str:
        """The user turn for ``problem`` under ``template``."""
        if self.template is None:
            return problem
        if self.template in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[self.template](problem)
        return self.template.replace("{problem}", problem)  # not str.format: LaTeX braces abound


def _reference(row: Row, mapping: HubMapping) -> Reference:
    solution = row.text(mapping.solution_field) if mapping.solution_field else None
    if mapping.verifier in _ANSWER_VERIFIERS:
        return Reference(answer=row.answer(mapping.answer_field), solution=solution)
    tests: Any = row.raw(mapping.answer_field)
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as err:
            raise row.error(mapping.answer_field, f"tests are not valid JSON ({err.msg})") from None
    if not isinstance(tests, (list, dict)) or not tests:
        raise row.error(mapping.answer_field, "expected tests as a non-empty list or object")
    return Reference(tests=tests, solution=solution)


def load_hub_records(path_or_id: str, source: str, mapping: HubMapping) -> list[Record]:
    """Records of split ``mapping.split`` of a hub-layout dataset, ids ``<source>/<id column>``.

    ``meta`` holds ``problem`` (the prompt column) and ``hub`` (``path_or_id``).

    Raises:
        DataError: naming ``hf://<path>[<split>]``, the 1-based row and the column, for a missing
            or ill-typed column value.
        FileNotFoundError / ValueError: from ``datasets`` if the dataset or split does not exist.
    """
    import datasets  # slow import (~2 s): only for hub roots

    dataset = datasets.load_dataset(path_or_id, split=mapping.split)
    where = f"hf://{path_or_id}[{mapping.split}]"
    rows = (Row(data, where, number, "row") for number, data in enumerate(dataset, start=1))
    return _records(rows, where, source, mapping, {"hub": path_or_id})


FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_file_records(path: str, source: str, mapping: HubMapping) -> list[Record]:
    """Records of one JSONL, JSON, CSV or parquet file mapped by ``mapping`` (its ``split`` unused),
    ids ``<source>/<id column>``; ``meta`` holds ``problem`` and ``file``.

    JSONL, CSV and JSON (an array, or JSON lines) are read by ``posttrain.data.readers`` (rows
    counted as lines, data rows and elements, values as written); parquet by ``datasets``.

    Raises:
        FileNotFoundError: naming the file if it does not exist.
        ValueError: for a suffix other than .jsonl/.json/.csv/.parquet.
        DataError: naming the file, the 1-based row and the column, for a bad value; naming the
            file for one that cannot be parsed at all or holds no row.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"{path}: unsupported benchmark file type {suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if not file.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found (source {source!r})")
    rows: Iterable[Row]
    if suffix == ".jsonl":
        rows = read_jsonl(file)
    elif suffix == ".csv":
        rows = read_csv(file)
    elif suffix == ".json":
        with open(file, "rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        rows = read_json_array(file) if head.startswith(b"[") else read_jsonl(file)
    else:
        import datasets

        try:
            dataset = datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train")
        except Exception as e:  # pyarrow / datasets errors carry no row: name the file at least
            raise DataError(str(path), None, None, f"cannot be read as {suffix[1:]} ({type(e).__name__}: {e})",
                            "file") from e
        rows = (Row(data, str(path), number, "row") for number, data in enumerate(dataset, start=1))
    return _records(rows, str(path), source, mapping, {"file": str(path)})


def _records(rows: Iterable[Row], where: str, source: str, mapping: HubMapping, extra_meta: dict) -> list[Record]:
    records, first_row = [], {}
    for row in rows:
        problem = row.text(mapping.prompt_field)
        key = row.answer(mapping.id_field)
        if key in first_row:
            raise row.error(mapping.id_field, f"duplicate id {key!r} (first in {row.unit} {first_row[key]})")
        first_row[key] = row.number
        records.append(
            Record(
                id=f"{source}/{key}",
                domain=mapping.domain,
                prompt=mapping.render_prompt(problem),
                verifier=mapping.verifier,
                reference=_reference(row, mapping),
                source=source,
                meta={"problem": problem.strip(), **extra_meta},
            )
        )
    if not records:
        raise DataError(where, None, None, f"no records for source {source!r} (the file is empty?)", "file")
    return records
