"""Entry points for every stage: resolve the data root, load a source, load a mixture.

A data root is one of:
- a local folder (``../shared/data`` by default) holding the shipped files;
- ``s3://bucket/prefix`` with the same layout: each file a source needs is downloaded through
  ``posttrain.storage.fetch`` (which caches it), then read like a local file;
- ``hf://<dataset-id-or-local-dir>``: a Hugging Face dataset in hub layout, mapped to records
  by a ``HubMapping`` (the source name then only names the records).

Subsampling is by a seeded hash of each record id, so it is deterministic across runs,
machines and Python versions, and the records kept with ``limit=k`` are among those kept with
``limit=k+1``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from posttrain.data.errors import DataError
from posttrain.data.hub import HubMapping, load_hub_records
from posttrain.data.sources import SourceSpec, get_source
from posttrain.records import Record

DATA_ENV = "POSTTRAIN_DATA"


def resolve_data_root(value: str | None = None) -> str:
    """The data root: ``value`` if given, else ``$POSTTRAIN_DATA``, else ``<repo>/../shared/data``.

    Returns a string: a local path or a URI (``s3://...``, ``hf://...``); nothing is checked.
    """
    if value:
        return str(value)
    env = os.environ.get(DATA_ENV)
    if env:
        return env
    return str((Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve())


def subsample(records: Sequence[Record], limit: int | None, seed: int = 0) -> list[Record]:
    """At most ``limit`` records, chosen by ``sha256(f"{seed}:{id}")``, in their original order.

    ``limit`` None (or at least ``len(records)``) keeps all.

    Raises:
        ValueError: if ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit is None or limit >= len(records):
        return list(records)

    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{records[i].id}".encode("utf-8", "surrogatepass")).digest()

    keep = set(sorted(range(len(records)), key=rank)[:limit])
    return [rec for i, rec in enumerate(records) if i in keep]


def _load_s3(spec: SourceSpec, root: str) -> list[Record]:
    """Download ``spec.files`` under ``root`` and load them from a staging folder of links."""
    from posttrain.storage import fetch  # lazy: boto3 only for S3 roots

    with tempfile.TemporaryDirectory(prefix="posttrain-data-") as tmp:
        origin: dict[str, str] = {}
        for rel in spec.files:
            uri = f"{root.rstrip('/')}/{rel}"
            dest = Path(tmp) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(Path(fetch(uri)).resolve())
            origin[str(dest)] = uri
        try:
            return spec.load(Path(tmp))
        except DataError as err:  # report the S3 object, not the temporary link
            raise err.with_path(origin.get(err.path, err.path)) from err


def load_source(
    name: str,
    data_root: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    mapping: HubMapping | Mapping[str, Any] | None = None,
) -> list[Record]:
    """The records of source ``name``, optionally a seeded subsample of at most ``limit``.

    ``data_root``: see the module docstring (None: ``resolve_data_root()``). ``mapping`` is
    required for ``hf://`` roots and refused for the others.

    Raises:
        KeyError: unknown source name (not for ``hf://`` roots, where any name is allowed).
        FileNotFoundError: a data file is missing under a local root.
        DataError: a bad row (file, row, field named).
        ValueError: a bad ``limit``, an unsupported URI scheme, a missing or misplaced ``mapping``.
        posttrain.storage.StorageError: an S3 object cannot be downloaded.
    """
    root = resolve_data_root(None if data_root is None else str(data_root))
    if root.startswith("hf://"):
        if mapping is None:
            raise ValueError(f"data root {root} is a hub dataset: load_source needs a HubMapping")
        records = load_hub_records(root.removeprefix("hf://"), name, HubMapping.model_validate(mapping))
        return subsample(records, limit, seed)
    if mapping is not None:
        raise ValueError(f"a HubMapping applies only to hf:// data roots, not {root}")
    spec = get_source(name)
    if root.startswith("s3://"):
        records = _load_s3(spec, root)
    elif "://" in root and not root.startswith("file://"):
        raise ValueError(f"unsupported data root {root!r}: use a local folder, s3://... or hf://...")
    else:
        records = spec.load(Path(root.removeprefix("file://")))
    return subsample(records, limit, seed)


class MixtureSpec(BaseModel):
    """One component of a data mixture: a source, at most ``limit`` of its records.

    ``data_root`` overrides the mixture's root for this source; ``mapping`` is for ``hf://`` roots;
    ``where`` keeps only records whose ``meta`` fields take one of the listed values (applied
    before ``limit``), e.g. ``{level: ["Level 1", "Level 2"]}`` on MATH.
    """

    model_config = ConfigDict(extra="forbid")
    source: str
    limit: int | None = Field(default=None, ge=0)
    data_root: str | None = None
    mapping: HubMapping | None = None
    where: dict[str, list[str | int | float | bool]] | None = None


def load_mixture(
    specs: Sequence[MixtureSpec | Mapping[str, Any]],
    data_root: str | Path | None = None,
    seed: int = 0,
) -> list[Record]:
    """Concatenate ``load_source`` over ``specs`` (dicts ``{source, limit}`` or ``MixtureSpec``s).

    Each source with ``limit`` below its size is subsampled with ``seed`` (see ``subsample``);
    the result is in spec order, then file order: trainers shuffle it themselves.

    Raises:
        ValueError: for an invalid spec (pydantic ``ValidationError``), or if two specs give the
            same record id (the same source listed twice).
        DataError: if ``specs`` is not empty but the mixture holds no record (every ``limit`` 0),
            naming the data root and the sources.
        and whatever ``load_source`` raises.
    """
    records: list[Record] = []
    seen: dict[str, str] = {}
    specs = [MixtureSpec.model_validate(raw) for raw in specs]
    for spec in specs:
        root = spec.data_root if spec.data_root is not None else data_root
        if spec.where:
            pool = [r for r in load_source(spec.source, root, None, seed, spec.mapping)
                    if all(r.meta.get(k) in allowed for k, allowed in spec.where.items())]
            if not pool:
                raise ValueError(f"mixture: no record of {spec.source!r} matches where={spec.where}")
            selected = subsample(pool, spec.limit, seed)
        else:
            selected = load_source(spec.source, root, spec.limit, seed, spec.mapping)
        for rec in selected:
            if rec.id in seen:
                raise ValueError(f"mixture: record id {rec.id!r} comes twice (source {spec.source!r} listed twice?)")
            seen[rec.id] = spec.source
            records.append(rec)
    if specs and not records:
        names = ", ".join(f"{s.source} (limit {s.limit})" if s.limit is not None else s.source for s in specs)
        raise DataError(resolve_data_root(None if data_root is None else str(data_root)), None, None,
                        f"the mixture of {names} holds no records", "file")
    return records
