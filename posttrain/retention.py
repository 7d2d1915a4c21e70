"""Nightly cleanup of the artifact store: keep what the champion and recent candidates need.

A pipeline run's record ``runs/<run_id>.json`` names the stage outputs it used (design.md §2).
The outputs to keep are those named by the kept runs' records and, through each kept output's
manifest (``upstream``), every output they were trained from. Everything else under
``stages/<stage>/<key>/`` goes: other published outputs, folders without a manifest (a stage
that failed or was interrupted, with its ``checkpoints/``), and leftover ``checkpoints/`` of
kept outputs. Anything modified within ``min_age_s`` is kept, so a pipeline running meanwhile
keeps its fresh outputs and resume points. Run records and ``evals/`` are never touched.

A cleanup is planned first (:func:`plan_cleanup`: every prefix with its size) and applied
separately (:func:`apply`, a dry run unless told otherwise).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from posttrain.storage import MANIFEST, ArtifactStore, ObjectInfo, StorageError

DEFAULT_MIN_AGE_S = 24 * 3600.0
CHECKPOINTS = "checkpoints"
# Files that make a folder count as an output or a resume point: deleted first, so no reader
# ever takes a half-deleted folder for a whole one.
_MARKERS = (MANIFEST, "latest.json")


@dataclass(frozen=True)
class Entry:
    """One prefix of the store: a stage output, or the ``checkpoints/`` folder inside one.

    ``kind``: ``published`` (has a manifest), ``unpublished`` or ``checkpoints``; ``bytes`` and
    ``files`` as listed when planned; ``newest``: latest modification time (epoch seconds).
    """

    prefix: str
    stage: str
    key: str
    kind: str
    files: tuple[str, ...]
    bytes: int
    newest: float
    reason: str


@dataclass
class CleanupPlan:
    """What a cleanup keeps and deletes, each prefix with its size."""

    root: str
    keep_runs: list[str]
    kept_keys: list[str]
    keep: list[Entry] = field(default_factory=list)
    delete: list[Entry] = field(default_factory=list)

    @property
    def bytes_to_delete(self) -> int:
        return sum(e.bytes for e in self.delete)

    @property
    def bytes_kept(self) -> int:
        return sum(e.bytes for e in self.keep)

    def to_dict(self) -> dict:
        """A JSON-able form."""
        return {**asdict(self), "bytes_to_delete": self.bytes_to_delete, "bytes_kept": self.bytes_kept}


def runs_to_keep(champion_run_id: str | None, candidate_run_ids: list[str | None], keep_candidates: int) -> list[str]:
    """The pipeline runs whose outputs a cleanup keeps: the champion's, then the first
    ``keep_candidates`` of ``candidate_run_ids`` (newest first; the champion counts among them
    when it is one), without repeats or empty ids.

    Raises:
        ValueError: if ``keep_candidates`` is negative.
    """
    if keep_candidates < 0:
        raise ValueError(f"keep_candidates must be >= 0, got {keep_candidates}")
    keep: list[str] = []
    for run in [champion_run_id, *candidate_run_ids[:keep_candidates]]:
        if run and run not in keep:
            keep.append(run)
    return keep


def _kept_keys(store: ArtifactStore, keep_runs: list[str],
               outputs: dict[tuple[str, str], list[ObjectInfo]]) -> set[str]:
    """Stage keys named by the kept runs' records, closed over the manifests' ``upstream`` keys."""
    keys: set[str] = set()
    for run in keep_runs:
        rel = f"runs/{run}.json"
        if not store.exists(rel):
            raise StorageError(f"{store.uri(rel)} does not exist: cannot tell what run {run} needs, so nothing "
                               f"is planned for deletion")
        keys |= {s["key"] for s in store.get_json(rel).get("stages", [])}
    stages_of = defaultdict(list)
    for stage, key in outputs:
        stages_of[key].append(stage)
    todo = list(keys)
    while todo:
        key = todo.pop()
        for stage in stages_of.get(key, []):
            manifest = store.stage_manifest(stage, key)
            upstream = manifest.get("upstream") if manifest else None
            if upstream and upstream not in keys:
                keys.add(upstream)
                todo.append(upstream)
    return keys


def _entry(prefix: str, stage: str, key: str, kind: str, infos: list[ObjectInfo], reason: str) -> Entry:
    return Entry(prefix, stage, key, kind, tuple(i.rel for i in infos), sum(i.size for i in infos),
                 max(i.modified for i in infos), reason)


def plan_cleanup(store: ArtifactStore, keep_runs: list[str], *, min_age_s: float = DEFAULT_MIN_AGE_S,
                 now: float | None = None) -> CleanupPlan:
    """Plan which stage outputs under ``stages/`` to delete: every one not needed by ``keep_runs``
    (pipeline run ids, as in ``runs/<run_id>.json``) and not modified within ``min_age_s``
    seconds of ``now`` (default: the current time). Nothing is deleted here.

    Raises:
        ValueError: if ``keep_runs`` is empty (a cleanup that keeps nothing is refused).
        posttrain.storage.StorageError: naming a kept run without a record.
    """
    if not keep_runs:
        raise ValueError("keep_runs is empty: refusing to plan a cleanup that would keep no stage output")
    cutoff = (time.time() if now is None else now) - min_age_s
    outputs: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    for info in store.list_info("stages/"):
        parts = info.rel.split("/")
        if len(parts) >= 4:  # stages/<stage>/<key>/<file...>
            outputs[(parts[1], parts[2])].append(info)
    kept = _kept_keys(store, keep_runs, outputs)
    plan = CleanupPlan(store.root, list(keep_runs), sorted(kept))
    for (stage, key), infos in sorted(outputs.items()):
        prefix = ArtifactStore.stage_prefix(stage, key)
        ckpt = [i for i in infos if i.rel.startswith(f"{prefix}/{CHECKPOINTS}/")]
        rest = [i for i in infos if not i.rel.startswith(f"{prefix}/{CHECKPOINTS}/")]
        published = any(i.rel == f"{prefix}/{MANIFEST}" for i in rest)
        kind = "published" if published else "unpublished"
        if key in kept:
            if rest:
                plan.keep.append(_entry(prefix, stage, key, kind, rest, "needed by a kept run"))
            if ckpt:
                part = _entry(f"{prefix}/{CHECKPOINTS}", stage, key, CHECKPOINTS, ckpt, "")
                if published and part.newest < cutoff:
                    plan.delete.append(replace(part, reason="resume points of a published output"))
                else:
                    plan.keep.append(replace(part, reason="recent" if published else "resume points of a kept output"))
            continue
        whole = _entry(prefix, stage, key, kind, infos, "")
        if whole.newest >= cutoff:
            plan.keep.append(replace(whole, reason=f"modified within {min_age_s / 3600:g} h"))
        else:
            plan.delete.append(replace(whole, reason="not needed by a kept run" if published else "never published"))
    return plan


def apply(plan: CleanupPlan, store: ArtifactStore, dry_run: bool = True) -> dict:
    """Delete the files of ``plan.delete`` (only when ``dry_run`` is False), markers
    (``manifest.json``, ``checkpoints/latest.json``) first. Files written under a prefix after
    it was planned are left alone.

    Returns ``{"dry_run", "root", "deleted": [prefix], "files", "bytes", "kept": [prefix],
    "bytes_kept"}`` (with ``dry_run`` what would be deleted).
    """
    if not dry_run:
        for entry in plan.delete:
            for rel in sorted(entry.files, key=lambda r: (r.rsplit("/", 1)[-1] not in _MARKERS, r)):
                store.delete(rel)
    return {"dry_run": dry_run, "root": plan.root, "deleted": [e.prefix for e in plan.delete],
            "files": sum(len(e.files) for e in plan.delete), "bytes": plan.bytes_to_delete,
            "kept": [e.prefix for e in plan.keep], "bytes_kept": plan.bytes_kept}


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cleanup_markdown(plan: CleanupPlan, dry_run: bool = True) -> str:
    """The plan as markdown (for a Prefect artifact): what goes, with sizes, and what stays."""
    verb = "Would delete" if dry_run else "Deleted"
    lines = [f"### Cleanup of {plan.root}" + (" (dry run)" if dry_run else ""), "",
             f"Kept runs: {', '.join(plan.keep_runs)}. {verb} {len(plan.delete)} prefixes, "
             f"{human_bytes(plan.bytes_to_delete)} ({plan.bytes_to_delete:,} bytes); keeping {len(plan.keep)}, "
             f"{human_bytes(plan.bytes_kept)}.", ""]
    if plan.delete:
        lines += ["| prefix | kind | files | size | bytes | reason |", "|---|---|---|---|---|---|"]
        lines += [f"| {e.prefix} | {e.kind} | {len(e.files)} | {human_bytes(e.bytes)} | {e.bytes:,} | {e.reason} |"
                  for e in plan.delete]
    return "\n".join(lines) + "\n"
