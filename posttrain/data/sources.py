"""The source registry: named loaders from the shipped data files to ``Record`` lists.

A source is a function ``(data_root: Path) -> list[Record]`` registered with
``@register_source(name, files=..., split=...)``; ``files`` (paths relative to the data root)
tell ``load_source`` what to download for a remote root. The sources themselves live in
``sources_math``, ``sources_code``, ``sources_stem``, ``sources_instruct`` and ``synthetic``;
they are imported (and so registered) the first time the registry is read.

Ids are ``<source>/<key>`` with ``key`` taken from the data (task id, problem id) or, where the
file has none, the 0-based row index: stable for a given file. Loaders skip rows they cannot
grade (interactive problems, rows without tests) and count them: ``skipped_rows(name)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from posttrain.data.errors import DataError, UnknownSourceError
from posttrain.records import Record

log = logging.getLogger(__name__)

Split = Literal["train", "eval"]
SourceFn = Callable[[Path], list[Record]]


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: ``fn`` loads it from a local data root.

    ``files``: the data files it reads, relative to the root (empty for generated sources);
    ``split``: "train" for training data, "eval" for benchmarks (never train on those).
    """

    name: str
    fn: SourceFn
    files: tuple[str, ...]
    split: Split

    @property
    def description(self) -> str:
        """First line of the loader's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""

    def load(self, data_root: Path) -> list[Record]:
        """Run the loader on a local root and check that its ids are unique.

        Raises:
            FileNotFoundError: if a data file is missing.
            DataError: for a bad row; for a duplicate id, or a file that yields no record at all
                (empty, or every row skipped), naming the file (``row`` None).
        """
        records = self.fn(Path(data_root))
        where = ", ".join(str(Path(data_root) / f) for f in self.files) if self.files else self.name
        if not records:
            skipped = skipped_rows(self.name)
            why = f" ({sum(skipped.values())} rows skipped: {skipped})" if skipped else " (the file is empty?)"
            raise DataError(where, None, None, f"no records for source {self.name!r}{why}", "file")
        seen: set[str] = set()
        for rec in records:
            if rec.id in seen:
                raise DataError(where, None, "id", f"duplicate record id {rec.id!r} in source {self.name!r}", "file")
            seen.add(rec.id)
        return records


_REGISTRY: dict[str, SourceSpec] = {}
_SKIPPED: dict[str, Counter[str]] = {}


def register_source(name: str, *, files: tuple[str, ...] | list[str], split: Split) -> Callable[[SourceFn], SourceFn]:
    """Decorator registering a loader function as source ``name``.

    Raises:
        ValueError: if ``name`` is already registered or ``split`` is not "train"/"eval".
    """
    if split not in ("train", "eval"):
        raise ValueError(f"source {name!r}: split must be 'train' or 'eval', got {split!r}")

    def wrap(fn: SourceFn) -> SourceFn:
        if name in _REGISTRY:
            raise ValueError(f"source {name!r} is already registered")
        _REGISTRY[name] = SourceSpec(name, fn, tuple(files), split)
        return fn

    return wrap


def _import_builtin_sources() -> None:
    # Imported here, not at module top: the source modules import this one to register.
    from posttrain.data import sources_code, sources_instruct, sources_lcb, sources_math, sources_stem, synthetic  # noqa: F401
    from posttrain.data.user_benchmarks import register_from_environment

    register_from_environment()  # benchmarks users add in $POSTTRAIN_BENCHMARKS


def get_source(name: str) -> SourceSpec:
    """The registered source ``name``.

    Raises:
        UnknownSourceError: (a ``KeyError`` and a ``ValueError``) naming the unknown source and
            listing the registered ones.
    """
    _import_builtin_sources()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable "name" from a malformed recipe
        raise UnknownSourceError(str(name), sorted(_REGISTRY)) from None


def check_benchmark(name: str) -> SourceSpec:
    """The source a benchmark name refers to: any registered source (evaluation sources are the
    benchmarks proper; a training source such as ``synthetic_digits`` may be evaluated too).

    Raises:
        UnknownSourceError: "unknown benchmark ...", listing the registered evaluation sources.
    """
    try:
        return get_source(name)
    except UnknownSourceError:
        raise UnknownSourceError(str(name), registered_sources("eval"), "benchmark",
                                 " (training sources are accepted too: posttrain.data.registered_sources())") from None


def registered_sources(split: Split | None = None) -> list[str]:
    """Names of the registered sources, sorted; only those of ``split`` when given."""
    _import_builtin_sources()
    return sorted(n for n, s in _REGISTRY.items() if split is None or s.split == split)


def note_skipped(source: str, reasons: Counter[str]) -> None:
    """Record (and log) the rows a loader skipped in its latest run, counted by reason."""
    _SKIPPED[source] = Counter(reasons)
    if reasons:
        log.info("source %s: skipped %s", source, dict(reasons))


def skipped_rows(source: str) -> dict[str, int]:
    """Rows the latest load of ``source`` skipped, by reason (e.g. ``{"interactive": 27}``); {} if none."""
    return dict(_SKIPPED.get(source, {}))
