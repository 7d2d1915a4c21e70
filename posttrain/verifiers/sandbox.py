"""Run untrusted Python source in a bubblewrap sandbox, as an unprivileged uid, with rlimits.

One entry point, ``run_program`` (design.md §4). Each program runs as::

    bwrap --unshare-net --unshare-pid --die-with-parent --new-session \
          --ro-bind / / [--tmpfs /root --perms 0755 --dir /root/.pyenv ... \
                         --ro-bind <interpreter prefix> <same>] \
          --tmpfs /tmp --bind <workdir> <workdir> --chdir <workdir> --dev /dev --proc /proc \
          -- setpriv --reuid=<uid> --regid=<uid> --clear-groups --inh-caps=-all \
          -- prlimit --cpu=<s>:<s+1> --as=<bytes> --fsize=<bytes> --nproc=64 --core=0 \
          -- <sandbox_python()> -I -S -c <_BOOT: run main.py as __main__>

- no network: a fresh network namespace has only a down loopback, so even local servers are
  unreachable;
- a fresh pid namespace; ``--die-with-parent`` and the namespace teardown kill every process of
  the program when bwrap is killed (the wall-clock timeout SIGKILLs bwrap's process group);
- the whole filesystem read-only, a private empty ``/tmp``, one writable directory (the per-run
  workdir, mode 0777 so the sandbox uid can write it), removed afterwards;
- interpreter visibility: ``sys.executable`` may live under a directory the sandbox uid cannot
  traverse (here ``/root`` is mode 0700 and the venv's base interpreter is
  ``/root/.pyenv/versions/...``). For each such path the topmost untraversable ancestor is
  replaced by an empty tmpfs (which also hides the rest of it, e.g. ``/root``'s credentials),
  the directories between it and the prefix are created 0755 (bwrap would make them 0700; the
  interpreter then still started but its loader fell back to /usr's libpython), and only the
  interpreter prefix is bind-mounted back read-only;
- an unprivileged uid (``setpriv`` drops root and all capabilities): RLIMIT_NPROC binds only a
  non-root uid (design.md §4: a fork bomb as root got 10,000 processes). Each run gets its own
  uid from ``_UID_BASE`` upwards (no passwd entry needed), so a fork bomb in one run cannot use
  up the process limit of runs beside it;
- a fresh temporary working directory per run, removed afterwards;
- ``python3 -I`` (isolated mode: no user site, no ``PYTHON*`` variables) with a scrubbed
  environment (minimal PATH/LANG/HOME; no AWS_*, tokens or other secrets of the parent);
- ``-S`` plus a five-line boot (``_BOOT``) instead of the ``site`` module: the boot defines
  ``exit``/``quit``, appends the installation's site-packages to ``sys.path`` and runs
  ``main.py`` in ``__main__``. So no ``.pth`` file of the host installation runs inside the
  sandbox: here one imports certifi and rewrites its CA bundle at every start, 28 of the 36 ms
  a bare ``python -I`` takes to start (a sandboxed ``print(1)`` went from 43 ms to ~18 ms);
- a new session, so a wall-clock timeout kills the whole process group;
- rlimits set by ``prlimit`` (util-linux, like ``setpriv``) after the uid drop, hard = soft so
  the program cannot raise them: CPU seconds, address space, file size, process count (binding
  only thanks to the uid drop), no core files. Not a ``preexec_fn``: that forces ``fork()`` of
  the caller, which is unsafe beside threads and costs ~100 ms per run from a trainer holding
  GBs of memory (measured: 3 GB parent, 96 ms vs 5 ms with ``vfork``);
- stdout/stderr read at most ``max_output_bytes`` each; the program is killed past that;
- exit status: bwrap reports a program killed by signal N as exit code 128 + N; ``run_program``
  turns that back into ``-N`` (so a program that itself exits with a code from 129 to
  128 + NSIG reads as killed by a signal: a failure either way).

Per-run cost beyond the program's own run (2 shared cores; benchmarks/code_verifier_throughput.py):
about 7 ms (bwrap with namespaces and mounts ~6 ms, temp dir, spawn, pipes); it was 11-13 ms
with a ``preexec_fn`` (~100 ms more from a 3 GB parent). The bwrap arguments that depend only on
the interpreter are computed once per process.

Without ``bwrap`` (or ``setpriv``/``prlimit``) ``run_program`` raises ``SandboxUnavailable``;
setting ``POSTTRAIN_UNSAFE_SANDBOX=1`` instead falls back to the rlimits-only subprocess (no
network or filesystem isolation, RLIMIT_NPROC not binding root; rlimits by ``preexec_fn``) with
a warning logged once.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 4 << 20  # per stream
MAX_FILE_BYTES = 16 << 20  # largest file the program may write
MAX_PROCESSES = 64  # per run: each run has its own uid
UNSAFE_ENV = "POSTTRAIN_UNSAFE_SANDBOX"
_UID_BASE = 200_000  # sandbox uids: _UID_BASE .. _UID_BASE + _UID_SPAN - 1, no passwd entries
_UID_SPAN = 100_000
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
# Run by ``python -I -S -c``: what ``site`` gives programs (``exit``/``quit``, site-packages on
# ``sys.path``) without running .pth files, then main.py as ``__main__`` (tracebacks name it).
_BOOT = (
    "import site, sys\n"
    "site.setquit()\n"
    "sys.path += site.getsitepackages()\n"
    "sys.argv[0] = __file__ = 'main.py'\n"
    "del site, sys\n"
    "exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))\n"
)
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
    ``memory_exceeded`` is a heuristic for a run that neither timed out nor overflowed its
    output: either the last line of stderr (the final exception) shows an allocation failure
    (``MemoryError`` when the address-space cap refuses an allocation), or the program died of
    a SIGKILL that ``run_program`` did not send (the kernel's OOM killer);
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


class SandboxUnavailable(RuntimeError):
    """bubblewrap (or setpriv) is missing or does not work here, and the unsafe fallback is off."""


_INSTALL_HINT = (
    "untrusted programs run under bubblewrap; install it (Debian/Ubuntu: "
    "`apt-get install -y bubblewrap`, or `make setup` as root), or set "
    f"{UNSAFE_ENV}=1 to run them with rlimits only (no network or filesystem isolation)"
)
_probe_lock = threading.Lock()
_probe_result: tuple[bool, str] | None = None  # (works, why not)
_warned_unsafe = False
_uids = itertools.count()
_uid_lock = threading.Lock()


def _next_uid() -> int:
    """A sandbox uid for one run, distinct between concurrent runs of this process."""
    with _uid_lock:
        n = next(_uids)
    return _UID_BASE + (os.getpid() * 997 + n) % _UID_SPAN


def _hidden_ancestor(path: str) -> str | None:
    """The topmost proper ancestor of ``path`` that other users cannot traverse, or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    current = ""
    for part in parts[:-1]:
        current += os.sep + part
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return current
    return None


@functools.lru_cache(maxsize=1)
def _interpreter_binds() -> tuple[str, ...]:
    """bwrap arguments that make the interpreter visible to an unprivileged uid (module docstring).

    Computed once per process: the interpreter does not move while it runs.
    """
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    needed.add(os.path.dirname(os.path.realpath(sys.executable)))
    tmpfs: set[str] = set()
    binds: set[str] = set()
    for path in needed:
        top = _hidden_ancestor(os.path.join(path, "x"))
        if top is not None:
            tmpfs.add(top)
            binds.add(path)
    binds = {p for p in binds if not any(p.startswith(q + os.sep) for q in binds)}
    args: list[str] = []
    for top in sorted(tmpfs):
        args += ["--tmpfs", top]
    made: set[str] = set()
    for path in sorted(binds):
        # bwrap would create the missing directories between the tmpfs and the bind as 0700
        # (untraversable for the sandbox uid): create them 0755 first.
        top = next(t for t in tmpfs if path.startswith(t + os.sep))
        middle = top
        for part in os.path.relpath(os.path.dirname(path), top).split(os.sep):
            if part in ("", "."):
                continue
            middle = os.path.join(middle, part)
            if middle not in made:
                made.add(middle)
                args += ["--perms", "0755", "--dir", middle]
        args += ["--ro-bind", path, path]
    return tuple(args)


def sandbox_python() -> str:
    """The interpreter programs run with: the base installation behind ``sys.executable``.

    A virtual environment's ``bin/python`` is a link that may sit where the sandbox hides it
    (a checkout under /tmp, which gets a private tmpfs); programs need only the standard
    library, which the base installation has.
    """
    return os.path.realpath(sys.executable)


def interpreter_command(python: str | None = None) -> list[str]:
    """How a program starts: ``python -I -S -c _BOOT``, which runs ``main.py`` of the current
    directory as ``__main__`` (module docstring). ``python`` defaults to ``sandbox_python()``."""
    return [python or sandbox_python(), "-I", "-S", "-c", _BOOT]


def _bwrap_prefix(workdir: str, uid: int | None) -> list[str]:
    """The bwrap + setpriv command line that precedes the interpreter (``prlimit`` goes between)."""
    base = os.path.realpath(sys.base_prefix)
    under_tmp = ["--ro-bind", base, base] if base.startswith("/tmp/") else []
    cmd = [
        "bwrap", "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session",
        "--ro-bind", "/", "/", *_interpreter_binds(),
        "--tmpfs", "/tmp", *under_tmp, "--bind", workdir, workdir, "--chdir", workdir,
        "--dev", "/dev", "--proc", "/proc", "--",
    ]
    if uid is not None:  # as root: drop to an unprivileged uid so RLIMIT_NPROC binds
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--"]
    return cmd


def _rlimits(cpu_s: int, memory_bytes: int) -> tuple[tuple[int, int, str], ...]:
    """(resource, limit, prlimit option) for each rlimit of a run; soft = hard except CPU."""
    return (
        (resource.RLIMIT_CPU, cpu_s, "cpu"),
        (resource.RLIMIT_AS, memory_bytes, "as"),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES, "fsize"),
        (resource.RLIMIT_NPROC, MAX_PROCESSES, "nproc"),
        (resource.RLIMIT_CORE, 0, "core"),
    )


def _prlimit_args(cpu_s: int, memory_bytes: int) -> list[str]:
    """``prlimit`` command prefix applying the run's rlimits (the CPU hard limit one second later,
    so SIGXCPU, which reads as a time limit, comes before SIGKILL)."""
    args = ["prlimit"]
    for which, value, option in _rlimits(cpu_s, memory_bytes):
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        args.append(f"--{option}={value}:{hard}")
    return [*args, "--"]


def _sandbox_uid() -> int | None:
    """The uid to drop to, or None when not root (already unprivileged: no setpriv needed)."""
    return _next_uid() if os.geteuid() == 0 else None


def _probe() -> tuple[bool, str]:
    """Check once per process that bwrap (and setpriv, as root) can start Python here."""
    global _probe_result
    with _probe_lock:
        if _probe_result is not None:
            return _probe_result
        missing = [t for t in ("bwrap", "setpriv", "prlimit") if shutil.which(t) is None]
        if os.geteuid() != 0 and "setpriv" in missing:
            missing.remove("setpriv")
        if missing:
            _probe_result = (False, f"{' and '.join(missing)} not found on PATH")
            return _probe_result
        workdir = tempfile.mkdtemp(prefix="posttrain-probe-")
        try:
            os.chmod(workdir, 0o777)
            limits = _prlimit_args(30, 2048 << 20)
            cmd = _bwrap_prefix(workdir, _sandbox_uid()) + limits + [sandbox_python(), "-I", "-c", "print('ok')"]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=30, env=dict(_SAFE_ENV))
                ok = done.returncode == 0 and done.stdout.strip() == b"ok"
                err = done.stderr.decode(errors="replace")[-500:]
                why = "" if ok else f"sandbox probe failed ({done.returncode}): {err}"
            except (OSError, subprocess.TimeoutExpired) as e:
                ok, why = False, f"sandbox probe failed: {e}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        _probe_result = (ok, why)
        return _probe_result


def sandbox_available() -> bool:
    """True when programs run under bubblewrap here (probed once per process)."""
    return _probe()[0]


def _isolation() -> bool:
    """True to run under bwrap; False for the unsafe fallback; raise if neither is allowed."""
    global _warned_unsafe
    ok, why = _probe()
    if ok:
        return True
    if os.environ.get(UNSAFE_ENV) == "1":
        if not _warned_unsafe:
            _warned_unsafe = True
            log.warning("%s; %s=1: running untrusted programs with rlimits only", why, UNSAFE_ENV)
        return False
    raise SandboxUnavailable(f"{why}: {_INSTALL_HINT}")


def _limiter(cpu_s: int, memory_bytes: int):
    """Build the preexec_fn that applies rlimits in the child (unsafe fallback only)."""
    limits = [
        (which, (value, value + 1 if which == resource.RLIMIT_CPU else value))
        for which, value, _ in _rlimits(cpu_s, memory_bytes)
    ]

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
    isolated = _isolation()
    workdir = tempfile.mkdtemp(prefix="posttrain-run-")
    try:
        if isolated:
            os.chmod(workdir, 0o777)  # writable by the sandbox uid
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(workdir, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        return _run_in(workdir, timeout_s, memory_mb, max_output_bytes, isolated)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: str, timeout_s: float, memory_mb: int, cap: int, isolated: bool) -> RunResult:
    """Start ``main.py`` in ``workdir`` (stdin from ``stdin.txt``), wait, kill the group, report."""
    env = dict(_SAFE_ENV, HOME=workdir, TMPDIR=workdir)
    cpu_s, memory_bytes = math.ceil(timeout_s) + 1, memory_mb << 20
    if isolated:
        cmd = [*_bwrap_prefix(workdir, _sandbox_uid()), *_prlimit_args(cpu_s, memory_bytes), *interpreter_command()]
        preexec = None  # no preexec_fn: lets subprocess use vfork (module docstring)
    else:
        cmd, preexec = interpreter_command(sys.executable), _limiter(cpu_s, memory_bytes)
    start = time.monotonic()
    with open(os.path.join(workdir, "stdin.txt"), "rb") as stdin_file:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
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
    code = _signal_status(proc.returncode) if isolated else proc.returncode
    timed_out = timed_out or code == -signal.SIGXCPU
    stderr = err.decode("utf-8", errors="replace")
    memory = not (timed_out or truncated) and (
        code == -signal.SIGKILL  # not sent by us: the kernel's OOM killer
        or (code != 0 and any(m in _last_line(stderr) for m in _MEMORY_MARKERS))
    )
    stdout = out.decode("utf-8", errors="replace")
    return RunResult(stdout, stderr, code, timed_out, memory, wall_s, truncated)


def _last_line(text: str) -> str:
    """The last non-blank line of ``text``."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _signal_status(code: int | None) -> int | None:
    """bwrap's exit code for a program killed by signal N is 128 + N: return ``-N`` for it."""
    if code is not None and 128 < code <= 128 + signal.NSIG:
        return -(code - 128)
    return code
