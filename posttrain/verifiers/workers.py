"""A small pool of worker processes that runs calls under a hard wall-clock limit per call.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one hung call. A call that
never returns keeps its worker forever, and killing that worker breaks the whole executor and
every call queued on it. Here each worker has its own pipe, a caller owns the workers it has
checked out until their calls return, and a call past its deadline costs exactly one worker:
the parent kills it (SIGKILL) and a fresh one is started when next needed.

Properties:
- Workers start with ``spawn`` (never ``fork``: the parent may hold torch/vLLM threads and CUDA
  state), lazily, only as many as the work in flight needs, up to ``max_workers``.
- A worker imports ``preload`` and runs ``initializer`` before it reports ready, so start-up
  (about 0.5-2 s for sympy) never counts against a call's deadline. ``bare_packages`` keeps a
  package's ``__init__`` from running there, so preloading one submodule stays light.
- Spawned workers do not re-import the parent's ``__main__`` script (Python's spawn would; see
  ``_without_main_module``), so a script without a ``__main__`` guard can grade too, and its
  top-level imports (torch...) never slow a worker's start-up.
- The deadline of a call starts when it is handed to a ready worker, not when it is queued.
- A worker that dies mid-call (segfault, ``os._exit``, OOM kill) gives that call the status
  ``"crashed"`` and is replaced; the pool keeps working.
- Thread-safe: several threads may call ``map``/``call`` at once; each waits only for its own.
- ``close()`` kills every worker; the module-level pools in this package register it with
  ``atexit``. Workers also exit by themselves when the parent's end of their pipe closes.
- Each task runs on the worker's main thread, so code that relies on ``signal.alarm``
  (math-verify's own timeouts) works there.

Tasks and their arguments must be picklable; a task function is pickled by reference
(module and name), so it must live at module level in an importable module.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle
import sys
import threading
import time
import types
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Literal, Sequence

Status = Literal["ok", "error", "timeout", "crashed"]
# A worker not ready after this long makes the call raise WorkerStartError (not a call timeout).
STARTUP_TIMEOUT_S = 120.0
# How often a caller with queued calls but no free worker looks again for one.
_POLL_S = 0.05


@dataclass(frozen=True)
class Outcome:
    """Result of one call: ``status`` "ok" (``value`` holds the return value), "error" (the call
    raised; ``error`` holds ``repr`` of the exception), "timeout" (killed at its deadline) or
    "crashed" (the worker died during the call)."""

    status: Status
    value: Any = None
    error: str | None = None


# The child's entry point. Spawn unpickles a Process target before calling it, and unpickling
# ``_worker_main`` would import this module's package (``posttrain.verifiers``) with its
# ``__init__``, i.e. every verifier (seconds). So the target is the builtin ``exec`` running this
# text, which first registers the ``bare_packages`` without their ``__init__``, then imports us.
_BOOTSTRAP = """
import importlib.util, sys
for name in bare_packages:
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
from posttrain.verifiers.workers import _worker_main
_worker_main(conn, preload, initializer)
"""


def _resolve(qualified: str) -> Callable[[], None]:
    """``"package.module:function"`` -> the function (imports the module)."""
    module, _, name = qualified.partition(":")
    return getattr(importlib.import_module(module), name)


def _exit_when_orphaned(interval_s: float = 1.0) -> None:
    """Worker-side watchdog thread: exit as soon as the parent process is gone.

    An idle worker notices by EOF on its pipe; a busy one (a call stuck in C code) would run on
    as an orphan without this. Not PR_SET_PDEATHSIG: that fires when the parent *thread* that
    started the worker exits, and workers are often started from short-lived threads.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def _worker_main(conn: Connection, preload: Sequence[str], initializer: str | None) -> None:
    """Worker loop: import ``preload``, run ``initializer`` ("module:function"), report ready,
    then serve calls on this process's main thread.

    Messages in: ``(fn, args)`` or ``None`` (stop). Messages out: ``("ready", None)`` once, then
    ``("ok", value)`` or ``("error", repr(exc))`` per call. Exits on ``None``, when the parent's
    end of the pipe closes (EOF), or when the parent process dies.
    """
    _exit_when_orphaned()
    try:
        for name in preload:
            importlib.import_module(name)
        if initializer is not None:
            _resolve(initializer)()
    except BaseException as exc:  # reported, then the worker exits; the parent raises
        conn.send(("error", f"worker start-up failed: {exc!r}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            message = pickle.loads(data)
            if message is None:
                return
            fn, args = message
            reply = ("ok", fn(*args))
        except BaseException as exc:  # a task's failure (or an unimportable task) must not end the worker
            reply = ("error", repr(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable return value
            conn.send(("error", f"could not send result: {exc!r}"))


_main_swap_lock = threading.Lock()


class _NoMain(types.ModuleType):
    """Stand-in ``__main__`` without ``__file__`` or ``__spec__`` while a worker is spawned."""


@contextlib.contextmanager
def _without_main_module():
    """Spawn a worker without it re-running the parent's ``__main__`` script.

    Python's spawn records the parent's main script (``__main__.__file__`` or ``__spec__``) when
    a process starts, and the child imports it again: a script without an ``if __name__ ==
    "__main__"`` guard would run its whole body (load models, start servers) in every grading
    worker and never report ready. Our workers need nothing from ``__main__`` (tasks are
    module-level functions), so ``__main__`` is swapped for an empty module for the moment the
    preparation data is taken (inside ``Process.start``), under a lock.
    """
    with _main_swap_lock:
        real = sys.modules.get("__main__")
        sys.modules["__main__"] = _NoMain("__main__")
        try:
            yield
        finally:
            if real is not None:
                sys.modules["__main__"] = real


class WorkerStartError(RuntimeError):
    """A worker process died or reported an error before it was ready (bad environment, not a bad call)."""


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, preload: Sequence[str], initializer: str | None, bare_packages: Sequence[str]) -> None:
        self.conn, child_conn = context.Pipe(duplex=True)
        names = {"conn": child_conn, "preload": tuple(preload), "initializer": initializer,
                 "bare_packages": tuple(bare_packages)}
        self.process = context.Process(target=exec, args=(_BOOTSTRAP, names), daemon=True, name="posttrain-worker")
        with _without_main_module():
            self.process.start()
        child_conn.close()
        self.ready = False

    def kill(self) -> None:
        """Kill the process (SIGKILL), reap it and close the pipe. Idempotent."""
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            self.conn.close()
        except OSError:
            pass


@dataclass
class _Running:
    worker: _Worker
    index: int
    deadline: float


class WorkerPool:
    """Up to ``max_workers`` spawned processes that run calls with a hard per-call time limit.

    Args:
        max_workers: most processes alive at once (default: the CPUs this process may use).
        preload: modules each worker imports before it reports ready.
        initializer: picklable no-argument function each worker runs after ``preload``.
        bare_packages: packages whose ``__init__`` workers skip (``"posttrain.verifiers"``: a
            worker that grades math need not import the code and instruct verifiers).
        start_method: "spawn" (default) or "forkserver"; "fork" is refused.

    Raises:
        ValueError: for ``max_workers < 1`` or the "fork" start method.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        preload: Sequence[str] = (),
        initializer: Callable[[], None] | None = None,
        bare_packages: Sequence[str] = (),
        start_method: str = "spawn",
    ) -> None:
        if start_method == "fork":
            raise ValueError("WorkerPool refuses 'fork': the parent may hold threads (torch, vLLM)")
        self.max_workers = max_workers or available_cpus()
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._context = multiprocessing.get_context(start_method)
        self._preload = tuple(preload)
        # Passed by name: unpickling the function itself would import its package's __init__.
        self._initializer = f"{initializer.__module__}:{initializer.__qualname__}" if initializer else None
        self._bare_packages = tuple(bare_packages)
        self._lock = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0  # live workers, idle or busy, plus slots reserved while starting one
        self._closed = False
        self.pid = os.getpid()
        self.started = 0  # workers started over the pool's life (tests and diagnostics)

    # -- worker bookkeeping ---------------------------------------------------------------
    def _acquire(self, block: bool) -> _Worker | None:
        """An idle worker, or a new one if below ``max_workers``; None if none and not blocking.

        Raises:
            RuntimeError: if the pool is closed.
        """
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("WorkerPool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_workers:
                    self._count += 1
                    break
                if not block:
                    return None
                self._lock.wait(timeout=1.0)
        try:  # started outside the lock: spawning takes milliseconds to seconds
            worker = _Worker(self._context, self._preload, self._initializer, self._bare_packages)
        except BaseException:
            with self._lock:
                self._count -= 1
                self._lock.notify()
            raise
        with self._lock:
            self.started += 1
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                self._count -= 1
                worker.kill()
            else:
                self._idle.append(worker)
            self._lock.notify()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._count -= 1
            self._lock.notify()

    # -- public API -----------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], args_list: Iterable[tuple], timeout_s: float) -> list[Outcome]:
        """Run ``fn(*args)`` for each tuple in ``args_list`` across the workers; keep the order.

        Args:
            fn: module-level (picklable) function.
            args_list: one argument tuple per call; N calls.
            timeout_s: wall-clock seconds per call, counted from when a ready worker receives it.
                A call still running then is killed with its worker and gets status "timeout".

        Returns:
            N ``Outcome`` objects, in the order of ``args_list``. Never raises for a failing,
            hanging or crashing call.

        Raises:
            WorkerStartError: if a worker dies or fails before it is ready (an environment
                problem, e.g. an import error in the worker).
            RuntimeError: if the pool is closed.
        """
        pending = deque(enumerate(args_list))
        results: list[Outcome | None] = [None] * len(pending)
        running: dict[Connection, _Running] = {}
        try:
            while pending or running:
                self._dispatch(fn, pending, running, timeout_s)
                self._collect(running, results, timeout_s, poll=bool(pending))
        except BaseException:  # e.g. WorkerStartError, KeyboardInterrupt: leave no call running
            for job in running.values():
                self._discard(job.worker)
            raise
        return results  # type: ignore[return-value]

    def _collect(self, running: dict, results: list, timeout_s: float, poll: bool) -> None:
        """Wait for messages from busy workers until the next deadline; kill workers past it."""
        now = time.monotonic()
        wake = min((r.deadline for r in running.values()), default=now + _POLL_S) - now
        if poll:  # queued calls: a worker may be freed by another thread, look again soon
            wake = min(wake, _POLL_S)
        for conn in wait(list(running), timeout=max(wake, 0.0)):
            self._receive(running, conn, results, timeout_s)
        now = time.monotonic()
        for conn, job in list(running.items()):
            if now >= job.deadline:
                del running[conn]
                self._discard(job.worker)
                if not job.worker.ready:
                    raise WorkerStartError(f"worker not ready after {STARTUP_TIMEOUT_S} s")
                results[job.index] = Outcome("timeout", error=f"no result after {timeout_s} s")

    def _dispatch(self, fn, pending: deque, running: dict, timeout_s: float) -> None:
        """Hand queued calls to free workers; block for one only if nothing is running."""
        while pending:
            worker = self._acquire(block=not running)
            if worker is None:
                return
            index, args = pending.popleft()
            try:
                worker.conn.send((fn, args))
            except (OSError, ValueError):  # the worker died while idle: replace it, retry the call
                self._discard(worker)
                pending.appendleft((index, args))
                continue
            except BaseException:  # e.g. an unpicklable argument: nothing was sent, keep the worker
                self._release(worker)
                raise
            limit = timeout_s if worker.ready else STARTUP_TIMEOUT_S
            running[worker.conn] = _Running(worker, index, time.monotonic() + limit)

    def _receive(self, running: dict, conn: Connection, results: list, timeout_s: float) -> None:
        """Read one message from a busy worker: the ready signal, or the call's result."""
        job = running[conn]
        try:
            status, value = conn.recv()
        except (EOFError, OSError):
            del running[conn]
            self._discard(job.worker)
            code = job.worker.process.exitcode
            if not job.worker.ready:
                raise WorkerStartError(f"worker died during start-up (exit code {code})") from None
            results[job.index] = Outcome("crashed", error=f"worker died (exit code {code})")
            return
        if status == "ready":  # start-up done: the call's own clock starts now
            job.worker.ready = True
            job.deadline = time.monotonic() + timeout_s
            return
        del running[conn]
        if not job.worker.ready:  # the only other message before "ready" is a start-up error
            self._discard(job.worker)
            raise WorkerStartError(value)
        self._release(job.worker)
        results[job.index] = Outcome("ok", value=value) if status == "ok" else Outcome("error", error=value)

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Outcome:
        """Run one ``fn(*args)`` in a worker under ``timeout_s`` seconds (see ``map``)."""
        return self.map(fn, [args], timeout_s)[0]

    def close(self) -> None:
        """Kill all idle workers now and busy ones as they come back; later calls raise. Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._lock.notify_all()
        for worker in idle:
            worker.kill()

    @property
    def size(self) -> int:
        """Workers alive now (idle or busy)."""
        with self._lock:
            return self._count


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
