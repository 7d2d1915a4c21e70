"""Stage leases: one run at a time computes a stage key, across processes and machines (design.md §2).

A local root locks a file with ``fcntl``; an S3 root keeps a ``lease.json`` next to the output,
created and renewed with conditional PUTs. Stores hand them out with ``ArtifactStore.lease``;
every name here is re-exported by :mod:`posttrain.storage`.

This module imports nothing from :mod:`posttrain.storage` at import time (``StorageError`` is
imported inside the two methods that raise or catch it; the store classes only annotate), so
storage can import it at its top without an import cycle.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from posttrain.storage import ArtifactStore, LocalStore, S3Store

LEASE = "lease.json"
# The leases were part of posttrain.storage: keep logging under its name, so that log
# configuration and filters set for "posttrain.storage" still see the lease messages.
log = logging.getLogger("posttrain.storage")


def lease_seconds() -> float:
    """How long a stage lease lives without renewal (``POSTTRAIN_LEASE_SECONDS``, 120): a run that
    dies on another machine blocks the key for at most this long."""
    return float(os.environ.get("POSTTRAIN_LEASE_SECONDS", "120"))


class StageLease:
    """The right to compute one stage key, held by one run at a time (design.md §2: two runs that
    reach the same key never both write it; the second waits and reuses the first's output).

    Use as a context manager; :meth:`acquire` waits for the lease or for the output, and the lease
    is released on exit (after publication, or when the stage fails, so a waiting run takes over).
    """

    def __init__(self, store: ArtifactStore, stage: str, key: str):
        self.store, self.stage, self.key = store, stage, key
        self.owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                      "stage": stage, "key": key}
        self.poll = max(0.2, min(5.0, lease_seconds() / 4))

    def acquire(self, published: Callable[[], bool]) -> bool:
        """Wait until this run holds the lease (True), or until ``published()`` says another run
        published the output meanwhile (False: reuse it)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StorageError if the lease was lost (another run took it over): do not publish then."""

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "StageLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _waiting(self, holder: dict | None, where: str) -> None:
        who = (f"host {holder.get('host')}, pid {holder.get('pid')}" if holder else "another process")
        log.info("%s (key %s): another run (%s) is computing it; waiting for its output (lease %s)",
                 self.stage, self.key, who, where)


class LocalLease(StageLease):
    """A local root: an ``fcntl`` lock on ``<root>/.locks/<stage>-<key>.lock``, released by the
    kernel if the holder dies."""

    def __init__(self, store: LocalStore, stage: str, key: str):
        super().__init__(store, stage, key)
        self.path = store.base / ".locks" / f"{stage}-{key}.lock"
        self._file = None

    def acquire(self, published: Callable[[], bool]) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "null")
            except json.JSONDecodeError:
                holder = None
            self._waiting(holder, str(self.path))
            fcntl.flock(f, fcntl.LOCK_EX)  # until the holder releases it (or dies)
        if published():
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(json.dumps({**self.owner, "acquired": time.time()}))
        f.flush()
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


class S3Lease(StageLease):
    """An S3 root: ``stages/<stage>/<key>/lease.json`` created with a conditional PUT
    (``If-None-Match: *``, so exactly one run creates it), renewed every quarter of its lifetime
    with ``If-Match`` on its ETag, and deleted (``If-Match``) after publication. A lease not renewed
    for ``POSTTRAIN_LEASE_SECONDS`` by the server's clock, or held by a dead process on this
    host, is stale: a waiting run takes it over with ``If-Match`` on the stale ETag, so only one
    run can.
    """

    _TAKEN = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
    _MISSING = ("NoSuchKey", "404", "NotFound")

    def __init__(self, store: S3Store, stage: str, key: str):
        super().__init__(store, stage, key)
        self.store: S3Store = store
        self.rel = f"{store.stage_prefix(stage, key)}/{LEASE}"
        self.ttl = lease_seconds()
        self.etag: str | None = None
        self.lost: dict | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "ttl": self.ttl, "renewed": time.time()}).encode()

    def _put(self, budget: float | None = None, **condition) -> str:
        s = self.store
        return s._call("lease write of", self.rel, lambda: s.client.put_object(
            Bucket=s.bucket, Key=s._key(self.rel), Body=self._body(), ContentType="application/json", **condition),
            expected=self._TAKEN + self._MISSING, budget=budget)["ETag"]

    def _read(self) -> tuple[dict, str, float] | None:
        """The current lease: ``(content, etag, age in seconds by the server's clock)``, or None."""
        from botocore.exceptions import ClientError
        from email.utils import parsedate_to_datetime

        s = self.store
        try:
            r = s._call("lease read of", self.rel, lambda: s.client.get_object(Bucket=s.bucket, Key=s._key(self.rel)),
                        expected=self._MISSING)
        except ClientError:
            return None
        try:
            content = json.loads(r["Body"].read())
        except json.JSONDecodeError:
            content = {}
        date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return content, r["ETag"], now - r["LastModified"].timestamp()

    def _stale(self, content: dict, age: float) -> bool:
        if age > float(content.get("ttl", self.ttl)):
            return True
        if content.get("host") == socket.gethostname() and isinstance(content.get("pid"), int):
            try:
                os.kill(content["pid"], 0)
            except ProcessLookupError:  # the holder died on this machine
                return True
            except PermissionError:
                pass
        return False

    def _try_take(self) -> tuple[bool, dict | None]:
        from botocore.exceptions import ClientError

        try:
            self.etag = self._put(IfNoneMatch="*")
            return True, None
        except ClientError:
            pass  # someone holds it
        current = self._read()
        if current is None:  # released in between: try again at once
            return False, None
        content, etag, age = current
        if self._stale(content, age):
            try:
                self.etag = self._put(IfMatch=etag)
            except ClientError:  # renewed, or taken over by someone else first
                return False, content
            log.warning("%s (key %s): took over the stale lease %s of host %s pid %s (last renewed %.0f s ago)",
                        self.stage, self.key, self.store.uri(self.rel), content.get("host"), content.get("pid"), age)
            return True, None
        return False, content

    def acquire(self, published: Callable[[], bool]) -> bool:
        announced = False
        while True:
            taken, holder = self._try_take()
            if taken:
                if published():  # the previous holder published and released just before
                    self.release()
                    return False
                self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.stage}", daemon=True)
                self._renewer.start()
                return True
            if holder is not None and not announced:
                self._waiting(holder, self.store.uri(self.rel))
                announced = True
            if published():
                return False
            time.sleep(self.poll if holder is not None else 0.05)

    def _renew(self) -> None:
        from botocore.exceptions import ClientError

        from posttrain.storage import StorageError  # deferred: see the module docstring

        while not self._stop.wait(self.ttl / 4):
            try:  # retried until the next renewal is due at most, so that release() never waits long
                self.etag = self._put(budget=self.ttl / 4, IfMatch=self.etag)
            except ClientError:
                current = self._read()
                self.lost = current[0] if current else {}
                log.error("%s (key %s): lease %s lost to host %s pid %s", self.stage, self.key,
                          self.store.uri(self.rel), self.lost.get("host"), self.lost.get("pid"))
                return
            except StorageError as e:  # the store is unreachable: keep trying; the lease may expire
                log.warning("%s (key %s): could not renew lease: %s", self.stage, self.key, e)

    def check(self) -> None:
        if self.lost is not None:
            from posttrain.storage import StorageError  # deferred: see the module docstring

            raise StorageError(f"{self.stage} (key {self.key}): lost the lease {self.store.uri(self.rel)} to host "
                               f"{self.lost.get('host')} pid {self.lost.get('pid')} (not renewed for "
                               f"{self.ttl:g} s): not publishing over that run's output")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.etag is None or self.lost is not None:
            return
        s, etag = self.store, self.etag
        self.etag = None
        try:
            s._call("lease deletion of", self.rel, lambda: s.client.delete_object(
                Bucket=s.bucket, Key=s._key(self.rel), IfMatch=etag), expected=self._TAKEN + self._MISSING,
                budget=min(s.retry_seconds, 10.0))
        except Exception as e:  # never hide the stage's own outcome; the lease expires by itself
            log.warning("%s (key %s): could not delete lease %s (it expires in %g s): %s", self.stage, self.key,
                        s.uri(self.rel), self.ttl, e)

