"""Row readers for the shipped files: JSONL (optionally gzipped), JSON arrays and CSV.

Shipped files are read with the standard library, not ``datasets``: loaders need the exact
1-based line of a bad row for ``DataError``, the files' nesting varies from row to row
(``tests`` lists of dicts, IFBench ``kwargs`` whose keys differ per instruction) where Arrow
would unify the types and invent ``None`` fields, and reading them this way writes no cache.
``datasets`` serves the ``hf://`` roots (``posttrain.data.hub``).

Each reader yields ``Row`` objects; their typed getters raise ``DataError`` naming the file,
the row and the field.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import IO, Any, Iterator

from posttrain.data.errors import DataError

_MISSING = object()


class Row:
    """One record of a data file, with typed getters that raise ``DataError`` on bad fields.

    ``number`` is the 1-based position counted in ``unit`` ("line", "item" or "row");
    ``prefix`` names the enclosing field for nested rows (``question.``).
    """

    __slots__ = ("data", "path", "number", "unit", "prefix")

    def __init__(self, data: dict[str, Any], path: str, number: int, unit: str = "line", prefix: str = ""):
        self.data, self.path, self.number, self.unit, self.prefix = data, str(path), number, unit, prefix

    def error(self, field: str | None, problem: str) -> DataError:
        """A ``DataError`` for ``field`` of this row (not raised)."""
        name = None if field is None else f"{self.prefix}{field}"
        return DataError(self.path, self.number, name, problem, self.unit)

    def raw(self, field: str) -> Any:
        """The value of a required field, any type. Raises DataError if the field is missing."""
        value = self.data.get(field, _MISSING)
        if value is _MISSING:
            raise self.error(field, "missing")
        return value

    def get(self, field: str, default: Any = None) -> Any:
        """The value of an optional field, or ``default``."""
        return self.data.get(field, default)

    def text(self, field: str, *, allow_empty: bool = False) -> str:
        """A required string field; non-blank unless ``allow_empty``. Raises DataError."""
        value = self.raw(field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise self.error(field, "empty")
        return value

    def answer(self, field: str) -> str:
        """A required short answer: a non-blank string, or an int/float rendered as a string."""
        value = self.raw(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return self.text(field).strip()

    def integer(self, field: str) -> int:
        """A required integer (an int, or a string of digits). Raises DataError."""
        value = self.raw(field)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(field, f"expected an integer, got {type(value).__name__}")
        try:
            return int(value)
        except ValueError:
            raise self.error(field, f"expected an integer, got {value!r}") from None

    def flag(self, field: str, default: bool | None = None) -> bool:
        """A boolean field; missing gives ``default`` (an error when ``default`` is None)."""
        value = self.data.get(field, _MISSING)
        if value is _MISSING and default is not None:
            return default
        value = self.raw(field)
        if not isinstance(value, bool):
            raise self.error(field, f"expected true/false, got {value!r}")
        return value

    def str_list(self, field: str, *, allow_empty: bool = False) -> list[str]:
        """A required list of strings (non-empty list unless ``allow_empty``). Raises DataError."""
        value = self.raw(field)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(field, "expected a list of strings")
        if not value and not allow_empty:
            raise self.error(field, "empty list")
        return value

    def nested(self, field: str) -> "Row":
        """A required object field as a ``Row`` whose errors name ``field.<sub>``."""
        value = self.raw(field)
        if not isinstance(value, dict):
            raise self.error(field, f"expected an object, got {type(value).__name__}")
        return Row(value, self.path, self.number, self.unit, f"{self.prefix}{field}.")

    def items(self, field: str, *, allow_empty: bool = False) -> list["Row"]:
        """A required list of objects as ``Row``s whose errors name ``field[i].<sub>``."""
        value = self.raw(field)
        if not isinstance(value, list) or (not value and not allow_empty):
            raise self.error(field, "expected a non-empty list of objects")
        rows = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{field}[{i}]", f"expected an object, got {type(item).__name__}")
            rows.append(Row(item, self.path, self.number, self.unit, f"{self.prefix}{field}[{i}]."))
        return rows


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return open(path, encoding="utf-8", newline=newline)


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (is the data root right?)")


def read_jsonl(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file (``.gz`` decompressed); ``Row.number`` is the 1-based line.

    Blank lines are skipped (they still count as lines).

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: for a line that is not valid JSON or not a JSON object.
    """
    _check_exists(path)
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), lineno, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(data, dict):
                raise DataError(str(path), lineno, None, f"expected a JSON object, got {type(data).__name__}")
            yield Row(data, str(path), lineno)


def read_json_array(path: Path) -> Iterator[Row]:
    """Rows of a file holding one JSON array of objects; ``Row.number`` is the 1-based element.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: if the file is not valid JSON (naming its line), not an array, or an
            element is not an object.
    """
    _check_exists(path)
    with _open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise DataError(str(path), err.lineno, None, f"invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataError(str(path), None, None, f"expected a JSON array, got {type(data).__name__}")
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DataError(str(path), i, None, f"expected a JSON object, got {type(item).__name__}", "item")
        yield Row(item, str(path), i, "item")


def read_csv(path: Path) -> Iterator[Row]:
    """Rows of a CSV file with a header; ``Row.number`` is the 1-based data row (header excluded).

    Raises:
        FileNotFoundError: if the file is missing.
    """
    _check_exists(path)
    with _open_text(path, newline="") as fh:  # the csv module handles quoted newlines itself
        for i, data in enumerate(csv.DictReader(fh), start=1):
            yield Row(dict(data), str(path), i, "row")
