"""Run untrusted Python source in a subprocess with resource limits.

One entry point, ``run_program``, so that a stronger isolation layer (bubblewrap, an unprivileged
uid: design.md §4) can replace its body without touching the verifiers. What this layer gives:
- a fresh temporary working directory per run, removed afterwards;
- ``python3 -I`` (isolated mode: no user site, no ``PYTHON*`` variables) with a scrubbed
  environment (minimal PATH/LANG/HOME; no AWS_*, tokens or other secrets of the parent);
- a new session, so a wall-clock timeout kills the whole process group;
- rlimits: CPU seconds, address space, file size, process count (RLIMIT_NPROC does not bind
  root: that needs the later uid drop);
- stdout/stderr read at most ``max_output_bytes`` each; the program is killed past that.
What it does not give: network isolation or a read-only filesystem.
"""

from __future__ import annotations

import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MAX_OUTPUT_BYTES = 4 << 20  # per stream
MAX_FILE_BYTES = 16 << 20  # largest file the program may write
MAX_PROCESSES = 128
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc")
_SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program run.

    ``returncode`` is negative for a signal (``-9`` killed), None if it never finished;
    ``timed_out`` covers both the wall-clock limit and the CPU rlimit (SIGXCPU);
    ``memory_exceeded`` is a heuristic: a failed run whose stderr shows an allocation failure;
    ``output_truncated`` means a stream passed the byte cap and the program was killed;
    ``wall_s`` is wall-clock seconds from start to exit.
    """

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    memory_exceeded: bool
    wall_s: float
    output_truncated: bool = False


def _limiter(cpu_s: int, memory_bytes: int):
    """Build the preexec_fn that applies rlimits in the child (values computed before fork)."""
    limits = (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
        (resource.RLIMIT_AS, (memory_bytes, memory_bytes)),
        (resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES)),
        (resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES)),
        (resource.RLIMIT_CORE, (0, 0)),
    )

    def apply() -> None:
        for which, value in limits:
            resource.setrlimit(which, value)

    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's process group (it leads its own session); ignore if already gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until both close, the deadline passes or a stream exceeds ``cap``.

    Returns (stdout, stderr, timed_out, truncated).
    """
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = truncated = False
    exited_at = None
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.2:
            break  # a leftover grandchild holds the pipes open: stop waiting for it
        for key, _ in sel.select(timeout=min(0.1, deadline - now)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                continue
            bufs[key.fd] += chunk
            if len(bufs[key.fd]) > cap:
                truncated = True
        if truncated:
            break
    sel.close()
    out, err = bufs[proc.stdout.fileno()], bufs[proc.stderr.fileno()]
    return bytes(out[:cap]), bytes(err[:cap]), timed_out, truncated


def run_program(
    source: str,
    stdin: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 2048,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> RunResult:
    """Run Python ``source`` with ``stdin`` under a wall-clock limit of ``timeout_s`` seconds.

    ``memory_mb`` caps the address space (MiB). The CPU-time rlimit is ``ceil(timeout_s) + 1``
    seconds. Thread-safe: each call has its own directory and process group.
    """
    workdir = tempfile.mkdtemp(prefix="posttrain-run-")
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(workdir, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        return _run_in(workdir, timeout_s, memory_mb, max_output_bytes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: str, timeout_s: float, memory_mb: int, cap: int) -> RunResult:
    """Start ``main.py`` in ``workdir`` (stdin from ``stdin.txt``), wait, kill the group, report."""
    env = dict(_SAFE_ENV, HOME=workdir, TMPDIR=workdir)
    start = time.monotonic()
    with open(os.path.join(workdir, "stdin.txt"), "rb") as stdin_file:
        proc = subprocess.Popen(
            [sys.executable, "-I", "main.py"],
            cwd=workdir,
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=_limiter(math.ceil(timeout_s) + 1, memory_mb << 20),
            close_fds=True,
        )
    deadline = start + timeout_s
    try:
        out, err, timed_out, truncated = _collect(proc, deadline, cap)
        if not (timed_out or truncated):
            # Pipes closed; give the program the rest of its time to exit on its own.
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    wall_s = time.monotonic() - start
    code = proc.returncode
    timed_out = timed_out or code == -signal.SIGXCPU
    stderr = err.decode("utf-8", errors="replace")
    memory = bool(code) and not timed_out and any(m in stderr for m in _MEMORY_MARKERS)
    stdout = out.decode("utf-8", errors="replace")
    return RunResult(stdout, stderr, code, timed_out, memory, wall_s, truncated)
