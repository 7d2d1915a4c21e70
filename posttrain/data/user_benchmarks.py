"""Benchmarks users add with one YAML entry and no code (design.md §1.5).

A YAML file maps benchmark names to a data file (JSONL, JSON, CSV or parquet; a relative path is
read from the YAML file's folder), a column mapping (``posttrain.data.hub.HubMapping``: id,
prompt and answer columns, domain, verifier, prompt template) and optionally ``k``::

    my_algebra:
      file: my_algebra.jsonl
      mapping: {id_field: id, prompt_field: question, answer_field: answer,
                domain: math, verifier: math, template: math}
      k: 16

``POSTTRAIN_BENCHMARKS`` (a path) is read when the source registry is first used, so every
command and stage sees the entries; :func:`register_user_benchmarks` registers a file directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posttrain.data.hub import HubMapping

# Samples per problem a user entry asks for (consulted by posttrain.eval.run.default_k).
USER_K: dict[str, int] = {}


class UserBenchmark(BaseModel):
    """One entry: the file, how its columns map to records, and the default samples per problem."""

    model_config = ConfigDict(extra="forbid")
    file: str
    mapping: HubMapping
    k: int | None = Field(default=None, ge=1)


def register_user_benchmarks(path: str | Path) -> list[str]:
    """Register every entry of a benchmarks YAML file as an evaluation source; return their names.

    Raises:
        ValueError: naming the YAML file and the entry for a malformed entry, or a name that is
            already registered (a built-in source or an earlier entry).
    """
    from posttrain.data.hub import load_file_records
    from posttrain.data.sources import register_source

    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read benchmarks file: {e}") from e
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: a benchmarks file is a mapping of names to entries")
    names = []
    for name, raw in tree.items():
        try:
            entry = UserBenchmark.model_validate(raw)
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{path}: benchmark {name!r}: {fields}") from None
        file = Path(entry.file) if Path(entry.file).is_absolute() else path.parent / entry.file

        def load(data_root: Path, file: Path = file, name: str = name, mapping: HubMapping = entry.mapping):
            return load_file_records(str(file), name, mapping)

        try:
            register_source(name, files=[], split="eval")(load)
        except ValueError as e:
            raise ValueError(f"{path}: benchmark {name!r}: {e}") from None
        if entry.k:
            USER_K[name] = entry.k
        names.append(name)
    return names


def register_from_environment() -> list[str]:
    """Register ``$POSTTRAIN_BENCHMARKS`` if set (once per process)."""
    path = os.environ.get("POSTTRAIN_BENCHMARKS")
    if not path or path in _DONE:
        return []
    _DONE.add(path)
    return register_user_benchmarks(path)


_DONE: set[str] = set()
