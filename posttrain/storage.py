"""Artifact store over one URI: a local folder or ``s3://bucket/prefix`` (design.md §2).

Stage outputs are content-addressed: ``<root>/stages/<stage>/<key>/``. A stage's files are
uploaded first and ``manifest.json`` (files, sizes, sha256) last, so a folder without a
manifest is never taken for an output. S3 goes through boto3; the endpoint comes from
``AWS_ENDPOINT_URL_S3`` (boto3 reads it itself) and credentials from the usual AWS variables.

Faults: an S3 call that meets an unreachable or overloaded endpoint is retried with exponential
backoff for at most ``POSTTRAIN_S3_RETRY_SECONDS`` (default 300), then fails with a
:class:`StorageError` naming the endpoint, the URI, the attempts and the time spent
(:mod:`posttrain.s3_retry`). A stage output is computed by one run at a time across machines:
:meth:`ArtifactStore.lease` (:mod:`posttrain.lease`). Both modules' public names are
re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# lease and s3_retry import nothing from this module at import time, so importing them here
# creates no import cycle (lease imports StorageError inside the methods that use it).
from posttrain.lease import LEASE, LocalLease, S3Lease, StageLease, lease_seconds  # noqa: F401 (re-exported)
from posttrain.s3_retry import _BACKOFF_CAP, _BACKOFF_FIRST, _error_code, _transient, s3_retry_seconds

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """An artifact could not be read or written; the message names the URI."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_root() -> str:
    """The artifact root URI: ``POSTTRAIN_ARTIFACTS`` or ``./artifacts``."""
    return os.environ.get("POSTTRAIN_ARTIFACTS", "artifacts")


def local_cache_dir() -> Path:
    """Where S3 objects are downloaded to (``POSTTRAIN_CACHE`` or ``./.cache/posttrain``)."""
    return Path(os.environ.get("POSTTRAIN_CACHE", ".cache/posttrain")).resolve()


@dataclass(frozen=True)
class ObjectInfo:
    """One stored file: its path relative to the root, size in bytes, last modified (epoch seconds)."""

    rel: str
    size: int
    modified: float


class ArtifactStore:
    """Files under one root URI; subclasses implement the byte-level operations."""

    root: str

    @staticmethod
    def from_uri(uri: str | None = None) -> "ArtifactStore":
        """Open the store at ``uri`` (default :func:`default_root`)."""
        uri = uri or default_root()
        if uri.startswith("s3://"):
            return S3Store(uri)
        if "://" in uri and not uri.startswith("file://"):
            raise StorageError(f"unsupported artifact URI {uri!r}: use a local path or s3://bucket/prefix")
        return LocalStore(uri.removeprefix("file://"))

    # byte-level operations -------------------------------------------------------------
    def put_file(self, local: Path, rel: str) -> None:
        raise NotImplementedError

    def get_file(self, rel: str, local: Path) -> None:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """Relative paths of all files under ``prefix``."""
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        raise NotImplementedError

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        """Every file under ``prefix`` with its size and modification time, sorted by path."""
        raise NotImplementedError

    def uri(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    # json helpers ------------------------------------------------------------------------
    def put_json(self, rel: str, obj: Any) -> None:
        """Write ``obj`` as JSON at ``rel`` (atomically: written whole or not at all)."""
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "obj.json"
            p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.put_file(p, rel)

    def get_json(self, rel: str) -> Any:
        """Read JSON at ``rel``. Raises StorageError if it is missing or malformed."""
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "obj.json"
            self.get_file(rel, p)
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise StorageError(f"{self.uri(rel)} is not valid JSON: {e}") from e

    # stage outputs -----------------------------------------------------------------------
    @staticmethod
    def stage_prefix(stage: str, key: str) -> str:
        return f"stages/{stage}/{key}"

    def stage_manifest(self, stage: str, key: str) -> dict | None:
        """The published manifest of a stage output, or None if it is not (fully) published."""
        rel = f"{self.stage_prefix(stage, key)}/{MANIFEST}"
        return self.get_json(rel) if self.exists(rel) else None

    def publish_stage(self, stage: str, key: str, local_dir: Path, extra: dict | None = None) -> dict:
        """Upload every file under ``local_dir`` to the stage's folder, then its manifest.

        Returns the manifest: ``{stage, key, files: {relpath: {size, sha256}}, content_hash, ...extra}``
        where ``content_hash`` is the sha256 over the sorted file entries.

        Raises:
            StorageError: naming the stage, key and folder, when an upload fails; the manifest
                is then not written, so the partial upload is never taken for an output.
        """
        prefix = self.stage_prefix(stage, key)
        files: dict[str, dict] = {}
        try:
            for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
                rel = path.relative_to(local_dir).as_posix()
                if rel in (MANIFEST, LEASE) or rel.startswith("checkpoints/"):
                    continue
                files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
                self.put_file(path, f"{prefix}/{rel}")
            content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
            manifest = {"stage": stage, "key": key, "files": files, "content_hash": content,
                        "created": time.time(), **(extra or {})}
            self.put_json(f"{prefix}/{MANIFEST}", manifest)
        except StorageError as e:
            raise StorageError(f"{stage} (key {key}): publishing to {self.uri(prefix)} stopped before its manifest "
                               f"was written, so nothing of it is visible as an output; rerun once the store is "
                               f"reachable. {e}") from e
        return manifest

    def fetch_stage(self, stage: str, key: str) -> Path:
        """A local folder holding a published stage output (downloaded once for S3).

        Raises:
            StorageError: if the output has no manifest, or a downloaded file's sha256 differs.
        """
        manifest = self.stage_manifest(stage, key)
        if manifest is None:
            raise StorageError(f"{self.uri(self.stage_prefix(stage, key))} has no manifest: not a published output")
        return self._materialise(self.stage_prefix(stage, key), manifest)

    def _materialise(self, prefix: str, manifest: dict) -> Path:
        raise NotImplementedError

    def lease(self, stage: str, key: str) -> "StageLease":
        """The lease that lets one run at a time compute ``stage``/``key`` (design.md §2)."""
        raise NotImplementedError


class LocalStore(ArtifactStore):
    """A folder on this machine."""

    def __init__(self, root: str | Path):
        self.base = Path(root).resolve()
        self.root = str(self.base)

    def _path(self, rel: str) -> Path:
        return self.base / rel

    def put_file(self, local: Path, rel: str) -> None:
        dest = self._path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)  # atomic within one filesystem

    def get_file(self, rel: str, local: Path) -> None:
        src = self._path(rel)
        if not src.is_file():
            raise StorageError(f"{src} does not exist")
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(p.relative_to(self.base).as_posix() for p in base.rglob("*") if p.is_file())

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        infos = []
        for rel in self.list(prefix):
            try:
                st = self._path(rel).stat()
            except FileNotFoundError:  # removed since it was listed
                continue
            infos.append(ObjectInfo(rel, st.st_size, st.st_mtime))
        return infos

    def delete(self, rel: str) -> None:
        """Remove ``rel`` and the folders it leaves empty (as on S3, where folders are only prefixes)."""
        path = self._path(rel)
        path.unlink(missing_ok=True)
        root = self._path("").resolve()
        for parent in path.resolve().parents:
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty
                break

    def _materialise(self, prefix: str, manifest: dict) -> Path:
        return self._path(prefix)

    def lease(self, stage: str, key: str) -> "StageLease":
        return LocalLease(self, stage, key)


class S3Store(ArtifactStore):
    """An S3 (or S3-compatible) bucket and prefix, through boto3.

    Every call is retried while the endpoint is unreachable or answers 5xx / throttling, with
    exponential backoff (1 s doubling to 30 s, jittered) until ``POSTTRAIN_S3_RETRY_SECONDS`` are
    spent (the last attempt may end later: by a few seconds for a refused connection, by up to two
    10 s connect timeouts for a silent host). Inside each attempt botocore retries once by itself,
    which absorbs a single dropped request or multipart part.
    """

    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        self.root = uri.rstrip("/")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                       connect_timeout=10, read_timeout=60))
        self.retry_seconds = s3_retry_seconds()

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, what: str, rel: str, fn: Callable[[], Any], expected: tuple[str, ...] = (),
              budget: float | None = None) -> Any:
        """``fn()``, retried while the endpoint is unreachable or busy (see the class) for
        ``budget`` seconds (default ``POSTTRAIN_S3_RETRY_SECONDS``).

        A ``ClientError`` whose code is in ``expected`` (a missing key, a failed condition) is
        raised as is, for the caller to handle.

        Raises:
            StorageError: naming the endpoint, ``what`` and the URI of ``rel``: after the retry
                time when the endpoint stays unreachable, at once for any other error.
        """
        start, attempt = time.monotonic(), 0
        budget = self.retry_seconds if budget is None else budget
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as e:  # boto3 raises several unrelated types
                if expected and _error_code(e) in expected:
                    raise
                elapsed = time.monotonic() - start
                if not _transient(e):
                    raise StorageError(f"{what} {self.uri(rel)} failed: {e}") from e
                delay = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if elapsed + delay > budget:
                    raise StorageError(
                        f"S3 endpoint {self.endpoint} unreachable: {what} {self.uri(rel)} failed after {attempt} "
                        f"attempts over {elapsed:.1f} s (POSTTRAIN_S3_RETRY_SECONDS={self.retry_seconds:g}); "
                        f"last error: {e}") from e
                if attempt == 1:
                    log.warning("S3 endpoint %s: %s %s failed (%s); retrying for up to %g s", self.endpoint, what,
                                self.uri(rel), e, budget)
                time.sleep(delay)

    def put_file(self, local: Path, rel: str) -> None:
        self._call(f"upload of {local} to", rel,
                   lambda: self.client.upload_file(str(local), self.bucket, self._key(rel)))

    def get_file(self, rel: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._call("download of", rel, lambda: self.client.download_file(self.bucket, self._key(rel), str(local)))

    def exists(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("lookup of", rel, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(rel)),
                       expected=("404", "NoSuchKey", "NotFound"))
            return True
        except ClientError:
            return False

    def _objects(self, prefix: str) -> list[dict]:
        def listing() -> list[dict]:
            paginator = self.client.get_paginator("list_objects_v2")
            return [o for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
                    for o in page.get("Contents", [])]

        return self._call("listing of", prefix, listing)

    def list(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(o["Key"][strip:] for o in self._objects(prefix))

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted((ObjectInfo(o["Key"][strip:], int(o["Size"]), o["LastModified"].timestamp())
                       for o in self._objects(prefix)), key=lambda info: info.rel)

    def delete(self, rel: str) -> None:
        self._call("deletion of", rel, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(rel)))

    def _materialise(self, prefix: str, manifest: dict) -> Path:
        dest = local_cache_dir() / self.bucket / self._key(prefix)
        done = dest / MANIFEST
        if done.is_file() and json.loads(done.read_text()).get("content_hash") == manifest["content_hash"]:
            return dest
        for rel, meta in manifest["files"].items():
            target = dest / rel
            if not (target.is_file() and target.stat().st_size == meta["size"] and sha256_file(target) == meta["sha256"]):
                self.get_file(f"{prefix}/{rel}", target)
                if sha256_file(target) != meta["sha256"]:
                    raise StorageError(f"{self.uri(prefix + '/' + rel)}: sha256 differs from its manifest")
        done.write_text(json.dumps(manifest))
        return dest

    def lease(self, stage: str, key: str) -> "StageLease":
        return S3Lease(self, stage, key)


def fetch(uri: str) -> Path:
    """A local path for one file URI (a local path is returned as is; S3 objects are cached).

    Raises:
        StorageError: if the object does not exist or cannot be downloaded.
    """
    if not uri.startswith("s3://"):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise StorageError(f"{path} does not exist")
        return path
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    store = S3Store(f"s3://{bucket}")
    dest = local_cache_dir() / "files" / bucket / key
    if not dest.is_file():
        store.get_file(key, dest)
    return dest
