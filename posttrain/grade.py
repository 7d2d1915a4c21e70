"""Offline grading of a JSONL file of completions (``posttrain grade``, design.md §3).

Each input line is a JSON object with ``completion`` and the reference fields of the chosen
verifier; each output line is that object plus ``score`` (0..1), ``passed`` and ``details``, in
the input's order.

Bad input fails the whole run, it is never skipped or graded 0: output lines must match input
lines one to one, and a per-line error record would let a broken file pass as a bad model. The
whole file is validated before anything is graded, so a malformed line (not UTF-8, not JSON, not
an object, blank, ``completion`` not a string, a reference field missing) fails fast with a
``ValueError`` that reads ``<input>:<line>: <problem naming the field>``; a reference the
verifier rejects while grading fails the same way. The output is written to a temporary file
and renamed at the end, so a failed run leaves no partial output and never touches an existing
output file. Odd completions (broken LaTeX, NUL bytes, 100k characters) are not errors: the
verifier grades them, usually 0.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from posttrain.verifiers.base import Verdict, Verifier, get_verifier

_IN_FLIGHT_PER_WORKER = 4
_worker_verifiers: dict[str, Verifier] = {}


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each line, checking JSON, ``completion`` and ``required``.

    Raises:
        ValueError: naming the file, the 1-based line number and the offending field.
    """
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
            if not line.strip():
                raise ValueError(f"{path}:{lineno}: blank line (one JSON object per line, one output line each)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise ValueError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValueError as e:  # int() of 4300+ digits: "Exceeds the limit (4300 digits) for ..."
                raise ValueError(f"{path}:{lineno}: not valid JSON ({str(e).split(':')[0]})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if not isinstance(obj.get("completion"), str):
                raise ValueError(f"{path}:{lineno}: field 'completion' must be a string")
            missing = [name for name in required if obj.get(name) is None]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field {missing[0]!r}")
            yield lineno, obj


def _reference(obj: dict[str, Any]) -> dict[str, Any]:
    """The reference fields of an input object: everything but ``completion``."""
    return {k: v for k, v in obj.items() if k != "completion"}


def _grade_one(verifier: str, completion: str, reference: dict[str, Any]) -> Verdict:
    """Grade one completion in a worker process, reusing that process's verifier instance."""
    if verifier not in _worker_verifiers:
        _worker_verifiers[verifier] = get_verifier(verifier)
    return _worker_verifiers[verifier].verify(completion, reference)


def _output_line(obj: dict[str, Any], verdict: Verdict) -> str:
    """The input object plus ``score``, ``passed`` and ``details``, as one JSON line."""
    out = {**obj, "score": float(verdict.score), "passed": bool(verdict.passed), "details": verdict.details}
    line = json.dumps(out, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the input) has no UTF-8: keep it escaped
        line = json.dumps(out)
    return line + "\n"


def _verdicts(verifier: str, rows: Iterator[tuple[int, dict]], workers: int, path: Path):
    """Yield (object, verdict) in input order, grading in a spawn process pool if ``workers > 1``.

    Raises:
        ValueError: when the verifier rejects a line's reference, naming file and line.
    """

    def resolve(lineno: int, get) -> Verdict:
        try:
            return get()
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from e

    if workers <= 1:
        for lineno, obj in rows:
            yield obj, resolve(lineno, lambda: _grade_one(verifier, obj["completion"], _reference(obj)))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[int, dict, Future]] = deque()
        for lineno, obj in rows:
            future = pool.submit(_grade_one, verifier, obj["completion"], _reference(obj))
            pending.append((lineno, obj, future))
            if len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
                done_lineno, done_obj, future = pending.popleft()
                yield done_obj, resolve(done_lineno, future.result)
        while pending:
            done_lineno, done_obj, future = pending.popleft()
            yield done_obj, resolve(done_lineno, future.result)


def grade_file(
    verifier: str, input_path: str | os.PathLike, output_path: str | os.PathLike, workers: int = 2
) -> dict:
    """Grade every line of ``input_path`` with ``verifier``; write results to ``output_path``.

    Output: one JSON line per input line, same order, the input object plus ``score``,
    ``passed`` and ``details``. Written to a temporary file and renamed, so a failure leaves no
    partial output. ``workers > 1`` grades in that many spawned processes.

    Returns:
        ``{"n": lines graded, "passed": count passed, "mean_score": mean score (0.0 if n = 0)}``.

    Raises:
        UnknownVerifierError: (a ``KeyError`` and a ``ValueError``) for an unknown verifier name,
            listing the registered ones.
        FileNotFoundError: if ``input_path`` does not exist.
        ValueError: for a malformed line, naming the file, line number and field (module docstring).
    """
    src, dst = Path(input_path), Path(output_path)
    required = tuple(getattr(get_verifier(verifier), "reference_fields", ()))
    for _ in _rows(src, required):  # validate the whole file before spending time grading
        pass
    tmp = dst.with_name(dst.name + ".partial")
    n = n_passed = 0
    total = 0.0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for obj, verdict in _verdicts(verifier, _rows(src, required), workers, src):
                out.write(_output_line(obj, verdict))
                n, n_passed, total = n + 1, n_passed + bool(verdict.passed), total + verdict.score
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"n": n, "passed": n_passed, "mean_score": total / n if n else 0.0}
