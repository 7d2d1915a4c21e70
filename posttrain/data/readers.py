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
import io
import json
import math
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from posttrain.data.errors import DataError

_MISSING = object()


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about arbitrary data."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(field, f"expected a finite number or a string, got {value!r}")
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
        except ValueError:  # not digits, or more digits than Python converts (4300)
            raise self.error(field, f"expected an integer, got {short_repr(value)}") from None

    def flag(self, field: str, default: bool | None = None) -> bool:
        """A boolean field; missing gives ``default`` (an error when ``default`` is None)."""
        value = self.data.get(field, _MISSING)
        if value is _MISSING and default is not None:
            return default
        value = self.raw(field)
        if not isinstance(value, bool):
            raise self.error(field, f"expected true/false, got {short_repr(value)}")
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


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (is the data root right?)")


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _unreadable(path: Path, err: BaseException) -> str:
    """What is wrong with a file that cannot be read to the end (gzip damage, I/O error)."""
    if path.suffix == ".gz" and isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"corrupt or truncated gzip file ({err})"
    return f"cannot be read ({type(err).__name__}: {err})"


def _parse_json(text: str, path: Path, line: int) -> Any:
    """``json.loads`` of line ``line``; any failure (syntax, nesting too deep, an integer of more
    than 4300 digits) is a ``DataError`` naming ``path`` and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), line, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(str(path), line, None, "invalid JSON (nested too deeply)") from None
    except ValueError as err:  # int("9" * 5000): Python's integer string limit
        raise DataError(str(path), line, None, f"invalid JSON ({str(err).split(':')[0]})") from None


def _lone_surrogate(value: Any, prefix: str = "") -> str | None:
    """The dotted path of the first string in ``value`` holding a lone surrogate (JSON's
    ``"\\ud800"`` escape decodes to one; it has no UTF-8 form and pydantic refuses it), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return prefix or "<value>"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _lone_surrogate(k, f"{prefix}.{k}".lstrip(".")) or _lone_surrogate(v, f"{prefix}.{k}".lstrip("."))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if found := _lone_surrogate(v, f"{prefix}[{i}]"):
                return found
    return None


def _check_unicode(data: Any, text: str, path: Path, row: int, unit: str = "line") -> None:
    """A ``DataError`` naming the field if ``data`` (parsed from ``text``) holds a lone surrogate.
    Only rows whose text has a ``\\u`` escape of a surrogate are walked: the check costs nothing
    on ordinary rows."""
    if "\\ud" in text or "\\uD" in text:
        field = _lone_surrogate(data)
        if field is not None:
            raise DataError(str(path), row, field, "not valid Unicode (a lone surrogate \\uD800-\\uDFFF escape)", unit)


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text of ``raw`` (line ``line`` of ``path``, or the whole file when ``line`` is 1
    and it holds several); a ``DataError`` naming the line of the first bad byte otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line += raw.count(b"\n", 0, err.start)
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {column} of the line)"
        raise DataError(str(path), line, None, problem) from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, text)`` of each line of a text file (``.gz`` decompressed), without
    its line ending. Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (as Python's text mode
    counts them); a UTF-8 byte order mark is dropped.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: for a line that is not UTF-8, or a damaged gzip stream (naming the line reached).
    """
    _check_exists(path)
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for raw in fh:  # bytes split at b"\n" only: each line is decoded (and reported) alone
                text = _decode(raw, path, lineno + 1)
                if lineno == 0:
                    text = text.removeprefix("\ufeff")
                for part in text.removesuffix("\n").removesuffix("\r").split("\r"):
                    lineno += 1
                    yield lineno, part
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(str(path), lineno + 1, None, _unreadable(path, err)) from None


def read_jsonl(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file (``.gz`` decompressed); ``Row.number`` is the 1-based line.

    Blank lines are skipped (they still count as lines).

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: for a line that is not UTF-8, not valid JSON or not a JSON object, or a
            damaged gzip stream.
    """
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        data = _parse_json(line, path, lineno)
        if not isinstance(data, dict):
            raise DataError(str(path), lineno, None, f"expected a JSON object, got {type(data).__name__}")
        _check_unicode(data, line, path, lineno)
        yield Row(data, str(path), lineno)


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text (``.gz`` decompressed, byte order mark dropped).

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: naming the line of the first byte that is not UTF-8, or a damaged gzip stream.
    """
    _check_exists(path)
    try:
        with _open_binary(path) as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(str(path), None, None, _unreadable(path, err), "file") from None
    return _decode(raw, path, 1).removeprefix("\ufeff")


def read_json_array(path: Path) -> Iterator[Row]:
    """Rows of a file holding one JSON array of objects; ``Row.number`` is the 1-based element.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: if the file is not UTF-8 or not valid JSON (naming its line), not an array,
            or an element is not an object.
    """
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(str(path), None, None, "invalid JSON (nested too deeply)", "file") from None
    except ValueError as err:
        raise DataError(str(path), None, None, f"invalid JSON ({str(err).split(':')[0]})", "file") from None
    if not isinstance(data, list):
        raise DataError(str(path), None, None, f"expected a JSON array, got {type(data).__name__}")
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DataError(str(path), i, None, f"expected a JSON object, got {type(item).__name__}", "item")
        _check_unicode(item, text, path, i, "item")
        yield Row(item, str(path), i, "item")


def read_csv(path: Path) -> Iterator[Row]:
    """Rows of a CSV file with a header; ``Row.number`` is the 1-based data row (header excluded).

    A row with fewer cells than the header lacks the last fields (``Row.raw`` says "missing");
    cells beyond the header are ignored.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: if the file is not UTF-8 (naming the line) or a row is not valid CSV.
    """
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))  # csv handles quoted newlines
    i = 0
    try:
        for i, data in enumerate(reader, start=1):
            yield Row({k: v for k, v in data.items() if k is not None and v is not None}, str(path), i, "row")
    except csv.Error as err:  # e.g. a field over csv.field_size_limit()
        raise DataError(str(path), i + 1, None, f"malformed CSV ({err})", "row") from None
