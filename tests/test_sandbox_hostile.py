"""Hostile programs under the bubblewrap sandbox: each ends with a verdict, the host unaffected.

Each test runs the program through ``run_program`` (to look at the raw result) and checks the
per-test verdict the code verifier gives it (``classify``).
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from posttrain.verifiers import sandbox
from posttrain.verifiers.code import build_cases, classify
from posttrain.verifiers.sandbox import RunResult, run_program

pytestmark = pytest.mark.skipif(
    not sandbox.sandbox_available(),
    reason="bubblewrap sandbox unavailable (apt-get install -y bubblewrap; see sandbox.py)",
)


def _verdict(result: RunResult, source: str, expected: str = "ok") -> str:
    """The code verifier's verdict for ``result`` as a stdin/stdout test expecting ``expected``."""
    return classify(result, build_cases(source, [{"input": "", "output": expected}])[0])


def _host_can_spawn() -> bool:
    return subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, timeout=10).stdout == b"1\n"


def _uid_processes(uid_floor: int) -> list[int]:
    """Pids of processes whose real uid is a sandbox uid (>= uid_floor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid_line = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) >= uid_floor:
            pids.append(int(entry.name))
    return pids


def test_fork_bomb_is_contained():
    start = time.monotonic()
    source = "import os\nwhile True:\n    os.fork()"
    result = run_program(source, timeout_s=5.0)
    # fork() fails at the process cap (BlockingIOError): a runtime error, or a time limit if slow
    assert _verdict(result, source) in {"runtime_error", "time_limit"}, result
    assert time.monotonic() - start < 10
    assert _host_can_spawn()
    time.sleep(0.2)
    assert _uid_processes(sandbox._UID_BASE) == []


def test_huge_allocation_fails():
    source = "x = bytearray(10 * 1024**3)\nprint(len(x))"
    result = run_program(source, timeout_s=5.0, memory_mb=512)
    assert result.returncode != 0 and result.stdout == ""
    assert result.memory_exceeded and _verdict(result, source) == "memory_limit"
    assert _host_can_spawn()


def test_ten_gigabytes_touched_page_by_page_fails():
    """Allocating 10 GB in 64 MB pieces, writing each: refused at the default 2 GB cap."""
    source = "chunks = []\nfor _ in range(160):\n    chunks.append(bytearray(64 << 20))\nprint(len(chunks))"
    result = run_program(source, timeout_s=10.0)
    assert _verdict(result, source) == "memory_limit", result


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and result.wall_s < 5
    assert _verdict(result, "") == "time_limit"


def test_sigterm_ignoring_loop_is_killed():
    source = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('armed', flush=True)\nwhile True:\n    pass"
    result = run_program(source, timeout_s=1.0)
    assert result.timed_out and result.stdout == "armed\n" and result.wall_s < 5
    assert _verdict(result, source) == "time_limit"
    time.sleep(0.2)
    assert _uid_processes(sandbox._UID_BASE) == []


def test_cannot_reach_local_server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        source = (
            "import socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"try:\n    s.connect(('127.0.0.1', {port}))\n    print('connected')\n"
            "except OSError as e:\n    print('refused', type(e).__name__)\n"
        )
        result = run_program(source, timeout_s=5.0)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.returncode == 0 and result.stdout.startswith("refused"), result
    assert _verdict(result, source, expected="connected") == "wrong_answer"


def test_cannot_write_outside_workdir():
    tag = uuid.uuid4().hex
    targets = [Path.cwd() / f"HACKED-{tag}", Path("/tmp") / f"hacked-{tag}", Path.home() / f"hacked-{tag}"]
    lines = "\n".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    print('wrote')\nexcept OSError as e:\n    print(type(e).__name__)"
        for t in targets
    )
    result = run_program(lines, timeout_s=5.0)
    assert result.returncode == 0, result
    for target in targets:
        assert not target.exists()
    # /tmp inside is a private tmpfs, so that write may succeed there but never reaches the host
    assert result.stdout.splitlines()[0] != "wrote"
    assert _verdict(result, lines, expected="wrote\nwrote\nwrote") == "wrong_answer"


def test_cannot_read_parent_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    source = (
        "import os\nprint(os.environ.get('AWS_SECRET_ACCESS_KEY'))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        seen = 'do-not-leak' in open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n"
        "        seen = False\n"
        "    if seen:\n"
        "        print('leaked via', pid)\n"
    )
    result = run_program(source, timeout_s=5.0)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["None"]
    assert "do-not-leak" not in result.stdout + result.stderr
    assert _verdict(result, source, expected="do-not-leak") == "wrong_answer"


def test_cannot_read_root_home():
    result = run_program("import os\nprint(os.listdir(os.path.expanduser('~root')))", timeout_s=5.0)
    if os.geteuid() == 0:  # /root is replaced by an empty tmpfs unless the interpreter lives there
        assert result.returncode == 0 and set(eval(result.stdout)) <= {".pyenv"}


def test_gigabyte_of_output_is_capped():
    start = time.monotonic()
    source = "import sys\nfor _ in range(1 << 14):\n    sys.stdout.write('y' * 65536)"
    result = run_program(source, timeout_s=8.0)
    assert result.output_truncated and len(result.stdout) == sandbox.MAX_OUTPUT_BYTES
    assert _verdict(result, source) == "wrong_answer"
    assert time.monotonic() - start < 10


def test_gigabyte_file_is_capped():
    source = "with open('big', 'wb') as f:\n    for _ in range(1 << 14):\n        f.write(b'y' * 65536)"
    result = run_program(source, timeout_s=8.0)
    assert "File too large" in result.stderr and _verdict(result, source) == "runtime_error"


def test_kill_everything_and_escape_the_group():
    """``kill(-1)`` reaches only the sandbox's pid namespace; a setsid daemon dies with the run."""
    daemon = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "    os._exit(0)\nprint('ok', flush=True)\n"
    )
    assert run_program(daemon, timeout_s=5.0).stdout == "ok\n"
    killer = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\nprint('still here')"
    result = run_program(killer, timeout_s=5.0)
    assert _verdict(result, killer, expected="still here") == "accepted", result
    assert _host_can_spawn()
    time.sleep(0.2)
    assert _uid_processes(sandbox._UID_BASE) == []


def test_unsafe_fallback_and_unavailable_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe_result", (False, "bwrap not found on PATH"))
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        run_program("print(1)")
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    result = run_program("print(1)")
    assert result.stdout == "1\n" and result.returncode == 0


def test_sandbox_runs_the_same_interpreter():
    """The interpreter under /root (mode 0700) is reachable as the sandbox uid, libpython included."""
    source = "import subprocess, sys\nprint(sys.version)\nprint(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True).stdout)"
    result = run_program(source, timeout_s=5.0)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [sys.version, "b'7\\n'"]


def test_fork_bomb_beside_normal_runs():
    """Each run has its own uid, so one run's fork bomb does not exhaust the others' process limit."""
    from concurrent.futures import ThreadPoolExecutor

    spawner = "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True).stdout)"
    sources = ["import os\nwhile True:\n    os.fork()"] * 2 + [spawner] * 6
    with ThreadPoolExecutor(len(sources)) as pool:
        results = list(pool.map(lambda s: run_program(s, timeout_s=5.0), sources))
    assert all(r.returncode != 0 or r.timed_out for r in results[:2])
    assert all(r.returncode == 0 and r.stdout == "b'7\\n'\n" for r in results[2:]), results[2:]
