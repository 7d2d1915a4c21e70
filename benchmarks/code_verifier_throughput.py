"""Code verifier throughput: one completion at a time vs a pooled batch, and the sandbox's overhead.

Not a test: run it by hand on an idle machine, e.g.

    .venv/bin/python benchmarks/code_verifier_throughput.py --source mbpp --items 100
    .venv/bin/python benchmarks/code_verifier_throughput.py --source humaneval --items 164 --ballast-gb 3

Items are real reference solutions (MBPP ``code`` with its asserts, HumanEval canonical
solutions with ``check``), graded by ``CodeVerifier``:

- one-at-a-time: ``CodeVerifier(workers=1).verify`` per item, in a loop;
- pooled: ``CodeVerifier(workers=W).verify_batch`` on all items (W = ``--workers``, default all
  cores): every test of every item shares one pool of W concurrent sandboxes.

Overhead per test: the one-at-a-time wall time minus the same programs (same source and stdin,
same interpreter command ``python -I -S -c <boot>``) run one after another in a bare subprocess,
divided by the number of tests: what the verifier adds beyond the program's own run (bwrap,
uid drop, rlimits, temp dir, spawn, output collection, teardown). A ``print(1)``
micro-benchmark gives the same figure for the smallest program, and a plain ``python -I``
start for reference (the sandbox's interpreter skips the ``site`` module: see sandbox.py).
``--ballast-gb`` first fills this process with that many GB, as a trainer holding a model
would: the cost of spawning must not grow with the parent's size.

Goals (the issue): speed-up >= 1.8 on 2 cores, overhead <= 30 ms per test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from posttrain.verifiers.code import CodeVerifier, build_cases, extract_code
from posttrain.verifiers.sandbox import interpreter_command, run_program, sandbox_python

SPEEDUP_GOAL, OVERHEAD_GOAL_MS = 1.8, 30.0


def load_items(data_root: Path, source: str, n: int) -> list[tuple[str, dict]]:
    """``n`` (completion, reference) pairs: MBPP rows in file order, HumanEval rows, or both alternating."""
    mbpp, humaneval = [], []
    if source in ("mbpp", "both"):
        with open(data_root / "benchmarks" / "mbpp.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                tests = {"asserts": row["test_list"], "setup": row["test_setup_code"]}
                mbpp.append((f"```python\n{row['code']}\n```", {"tests": tests}))
    if source in ("humaneval", "both"):
        with gzip.open(data_root / "benchmarks" / "humaneval.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                tests = {"functional": f"{row['test']}\ncheck({row['entry_point']})\n"}
                humaneval.append((f"```python\n{row['prompt']}{row['canonical_solution']}\n```", {"tests": tests}))
    if source == "both":
        mixed = [item for pair in zip(mbpp, humaneval) for item in pair]
        return mixed[:n]
    return (mbpp or humaneval)[:n]


def run_bare(workdir: str, source: str, stdin: str) -> None:
    """Run ``source`` as the sandbox would (same interpreter and flags), with no sandbox."""
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
        f.write(source)
    subprocess.run(interpreter_command(), input=stdin.encode(), cwd=workdir,
                   capture_output=True, timeout=60)


def bare_seconds(items: list[tuple[str, dict]]) -> tuple[float, int]:
    """(wall seconds, number of tests) to run every test's program in a bare subprocess, in turn."""
    cases = [c for completion, ref in items for c in build_cases(extract_code(completion), ref["tests"])]
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        for case in cases:
            run_bare(workdir, case.source, case.stdin)
        return time.perf_counter() - start, len(cases)


def micro_ms(repeats: int) -> tuple[float, float, float]:
    """Median wall ms of ``print(1)``: sandboxed (``run_program``), bare with the sandbox's
    interpreter command, and a plain ``python -I -c``."""
    run_program("print(1)")  # probe once
    times: tuple[list[float], list[float], list[float]] = ([], [], [])
    with tempfile.TemporaryDirectory() as workdir:
        runs = (
            lambda: run_program("print(1)"),
            lambda: run_bare(workdir, "print(1)", ""),
            lambda: subprocess.run([sandbox_python(), "-I", "-c", "print(1)"], capture_output=True),
        )
        for _ in range(repeats):
            for run, out in zip(runs, times):
                start = time.perf_counter()
                run()
                out.append(time.perf_counter() - start)
    sandboxed, bare, plain = (statistics.median(t) * 1000 for t in times)
    return sandboxed, bare, plain


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat (all processes).

    The sandboxed programs run in their own pid namespaces, out of reach of this process's
    ``RUSAGE_CHILDREN``; the machine-wide figure shows whether the cores were saturated,
    including by other users' work.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_since(mark: tuple[int, int]) -> float:
    """Fraction of all cores busy since ``mark`` (a ``machine_ticks()`` value)."""
    busy, total = machine_ticks()
    return (busy - mark[0]) / max(1, total - mark[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("POSTTRAIN_DATA", "../shared/data")))
    ap.add_argument("--source", choices=["mbpp", "humaneval", "both"], default="both")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None, help="pooled sandboxes (default: all cores)")
    ap.add_argument("--micro", type=int, default=30, help="print(1) repeats for the micro-benchmark")
    ap.add_argument("--ballast-gb", type=float, default=0.0, help="fill this process first (GB)")
    args = ap.parse_args()

    ballast = bytearray(int(args.ballast_gb * (1 << 30)))
    for i in range(0, len(ballast), 4096):  # touch every page, as a loaded model would
        ballast[i] = 1
    items = load_items(args.data, args.source, args.items)
    completions, references = [c for c, _ in items], [r for _, r in items]
    workers = args.workers or len(os.sched_getaffinity(0))
    print(f"{len(items)} {args.source} items, {len(os.sched_getaffinity(0))} cores, pooled workers {workers}, "
          f"ballast {args.ballast_gb:g} GB, load average {os.getloadavg()[0]:.2f}")

    sandboxed_ms, bare_ms, plain_ms = micro_ms(args.micro)
    print(f"print(1): sandbox {sandboxed_ms:.1f} ms, bare {bare_ms:.1f} ms (overhead {sandboxed_ms - bare_ms:.1f} ms); "
          f"plain python -I {plain_ms:.1f} ms")

    bare_s, n_tests = bare_seconds(items)
    serial = CodeVerifier(workers=1)
    start, mark = time.perf_counter(), machine_ticks()
    one_by_one = [serial.verify(c, r) for c, r in items]
    serial_s, serial_busy = time.perf_counter() - start, busy_since(mark)
    start, mark = time.perf_counter(), machine_ticks()
    pooled = CodeVerifier(workers=workers).verify_batch(completions, references)
    pooled_s, pooled_busy = time.perf_counter() - start, busy_since(mark)

    passed = (sum(v.passed for v in one_by_one), sum(v.passed for v in pooled))
    overhead_ms = (serial_s - bare_s) / n_tests * 1000
    speedup = serial_s / pooled_s
    print(f"tests {n_tests}; passed one-at-a-time {passed[0]}/{len(items)}, pooled {passed[1]}/{len(items)}")
    print(f"bare programs:  {bare_s:7.2f} s  ({bare_s / n_tests * 1000:.1f} ms per test)")
    # Machine busy: on an idle machine one-at-a-time keeps about one core busy, pooled all of
    # them; a high figure in the one-at-a-time phase means other work shared the cores.
    for label, seconds, busy in (("one-at-a-time", serial_s, serial_busy), (f"pooled ({workers})", pooled_s, pooled_busy)):
        print(f"{label:<15} {seconds:7.2f} s  {len(items) / seconds:6.1f} items/s  "
              f"{n_tests / seconds:6.1f} tests/s  machine busy {busy:.0%}")
    print(f"speed-up {speedup:.2f}x (goal >= {SPEEDUP_GOAL}x): {'ok' if speedup >= SPEEDUP_GOAL else 'MISSED'}")
    print(f"overhead per test {overhead_ms:.1f} ms (goal <= {OVERHEAD_GOAL_MS:g} ms): "
          f"{'ok' if overhead_ms <= OVERHEAD_GOAL_MS else 'MISSED'}")
    del ballast
    sys.exit(0)


if __name__ == "__main__":
    main()
