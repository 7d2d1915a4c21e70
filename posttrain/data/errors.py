"""The one error a loader raises for bad data: it names the file, the row and the field."""

from __future__ import annotations

import difflib


class DataError(ValueError):
    """A row of a data file does not have the shape its loader expects.

    Attributes:
        path: the file (or URI) holding the bad row.
        row: 1-based position of the row (the line number for JSONL, the element for a JSON
            array, the data row for CSV and hub datasets); None for a file-level problem.
        field: the field at fault (dotted for nested fields, e.g. ``question.choices[2].label``);
            None when the row itself is unreadable (invalid JSON).
        problem: what is wrong, in words.
        unit: what ``row`` counts: ``"line"``, ``"item"`` or ``"row"``.

    The message reads ``<path>: line 12: field 'answer': missing``.
    """

    def __init__(
        self,
        path: str,
        row: int | None,
        field: str | None,
        problem: str,
        unit: str = "line",
    ) -> None:
        self.path, self.row, self.field, self.problem, self.unit = str(path), row, field, problem, unit
        parts = [self.path]
        if row is not None:
            parts.append(f"{unit} {row}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(problem)
        super().__init__(": ".join(parts))

    def with_path(self, path: str) -> "DataError":
        """The same error reported against another path (e.g. the S3 URI a staged file came from)."""
        return DataError(path, self.row, self.field, self.problem, self.unit)


class UserFileMissing(DataError, FileNotFoundError):
    """A benchmark that is not shipped (its licence or authors forbid it) has not been supplied:
    the message says where to get it and where to put it."""

    def __init__(self, path: str, how: str) -> None:
        super().__init__(path, None, None, f"not found. {how}", unit="file")


class UnknownSourceError(KeyError, ValueError):
    """A data source (or benchmark) name that is not registered; the message lists the registered ones.

    A ``KeyError`` for code that looks names up, a ``ValueError`` for code that validates input.
    ``str()`` is the plain message (a bare ``KeyError`` would quote it).

    Attributes:
        name: the unknown name.
        registered: the names that would have been accepted.
    """

    def __init__(self, name: str, registered: list[str], kind: str = "data source", hint: str = "") -> None:
        self.name, self.registered, self.kind = name, list(registered), kind
        close = difflib.get_close_matches(name, self.registered, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{guess}; registered: {', '.join(self.registered)}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])
