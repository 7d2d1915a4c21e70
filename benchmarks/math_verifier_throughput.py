"""Math verifier throughput: items/s on MATH-500 golds against perturbed answers.

Not a test: run it by hand (on an idle machine for figures worth quoting), e.g.

    .venv/bin/python benchmarks/math_verifier_throughput.py --items 1500 --workers 2

Each item is one MATH-500 gold and a completion ``<think>..</think> ... \\boxed{answer}`` whose
answer is, in turn, the gold itself ("correct"), an equivalent rewrite ("rewritten": ``a/b`` or a
decimal for ``\\frac{a}{b}``, a leading zero for an integer, ``\\dfrac``, spacing) or a wrong one
("wrong": a digit bumped). Modes:

- ``serial``: ``MathVerifier.verify`` item by item on the main thread (math-verify in-process,
  under its signal timeouts: the grade CLI's path);
- ``threads``: ``verify`` from a thread pool (Prefect tasks): every item makes a round trip to the
  worker processes;
- ``batch``: one ``MathVerifier.verify_batch`` over all items (the RL reward's path), across
  ``--workers`` processes; "cold" includes starting them, "warm" uses workers already started
  and warmed up on other answers to the same golds (as in RL after the first step).

``--hard-only`` keeps only items that the cheap checks (exact, integer, text) cannot settle, to
measure the math-verify path itself. Prints a table of seconds and items/s per mode, and checks
that all modes agree.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _rewrite(gold: str) -> str:
    """An equivalent spelling of a MATH gold answer."""
    g = gold.strip()
    m = re.fullmatch(r"(-?)\\[dt]?frac\s*\{?(\d+)\}?\s*\{?(\d+)\}?", g)
    if m:
        sign, num, den = m.groups()
        return f"{sign}{num}/{den}"
    if re.fullmatch(r"\d+", g):
        return "0" + g
    if "\\frac" in g:
        return g.replace("\\frac", "\\dfrac")
    return " ".join(g.replace(",", ", ").split())


def _wrong(gold: str) -> str:
    """A wrong answer: the first number's last digit bumped, else ``+1`` appended."""
    m = re.search(r"\d+", gold)
    if not m:
        return gold + "+1"
    i = m.end() - 1
    return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1 :]


def build_items(golds: list[str], n: int, shift: int = 0) -> tuple[list[str], list[dict], list[str]]:
    """N (completions, references, kinds) cycling through golds and kinds; ``shift`` rotates the
    kinds, so a shifted set pairs the same golds with other answers (for warming up)."""
    completions, references, kinds = [], [], []
    for i in range(n):
        gold = golds[i % len(golds)]
        kind = ("correct", "rewritten", "wrong")[(i + shift) % 3]
        answer = {"correct": gold, "rewritten": _rewrite(gold), "wrong": _wrong(gold)}[kind]
        completions.append(f"<think>Some reasoning with \\boxed{{0}}.</think>The answer is $\\boxed{{{answer}}}$.")
        references.append({"answer": gold})
        kinds.append(kind)
    return completions, references, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data root (default: $POSTTRAIN_DATA or ../shared/data)")
    ap.add_argument("--items", type=int, default=1500, help="items per mode")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    ap.add_argument("--threads", type=int, default=4, help="caller threads in the 'threads' mode")
    ap.add_argument("--modes", default="serial,threads,batch", help="comma-separated: serial,threads,batch")
    ap.add_argument("--hard-only", action="store_true",
                    help="keep only items the cheap checks cannot settle (every one goes to math-verify)")
    args = ap.parse_args()

    from posttrain.data import resolve_data_root
    from posttrain.verifiers import math as math_verifier
    from posttrain.verifiers.math import MathVerifier, quick_reason

    path = Path(resolve_data_root(args.data)) / "benchmarks" / "math500.jsonl"
    golds = [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    completions, references, kinds = build_items(golds, args.items * (6 if args.hard_only else 1))
    warm_c, warm_r, _ = build_items(golds, 200, shift=1)
    hard = [quick_reason(r["answer"], math_verifier.extract_answer(c) or "") is None
            for c, r in zip(completions, references)]
    sympy_share = sum(hard) / len(hard)
    if args.hard_only:
        keep = [i for i, h in enumerate(hard) if h][: args.items]
        completions, references, kinds = ([xs[i] for i in keep] for xs in (completions, references, kinds))
        sympy_share = 1.0
    math_verifier.configure_pool(args.workers)
    verifier = MathVerifier()
    print(f"{len(completions)} items from {len(golds)} MATH-500 golds; {sympy_share:.0%} need math-verify "
          f"(the rest are settled by exact/integer/text checks); workers: {math_verifier.get_pool().max_workers}")

    runs: list[tuple[str, float, list[bool]]] = []
    for mode in args.modes.split(","):
        if mode == "serial":
            for c, r in zip(warm_c[:50], warm_r[:50]):  # sympy's first parses are slow: not timed
                verifier.verify(c, r)
            start = time.perf_counter()
            passed = [verifier.verify(c, r).passed for c, r in zip(completions, references)]
            runs.append(("serial (main thread)", time.perf_counter() - start, passed))
        elif mode == "threads":
            verifier.verify_batch(warm_c, warm_r)  # workers started and warm: not timed
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.threads) as pool:
                passed = [v.passed for v in pool.map(verifier.verify, completions, references)]
            runs.append((f"threads ({args.threads}) -> workers", time.perf_counter() - start, passed))
        elif mode == "batch":
            for label in ("cold", "warm"):
                math_verifier.configure_pool(args.workers)  # a fresh pool
                if label == "warm":
                    verifier.verify_batch(warm_c, warm_r)  # started and warmed on other answers
                start = time.perf_counter()
                passed = [v.passed for v in verifier.verify_batch(completions, references)]
                runs.append((f"batch in workers ({label})", time.perf_counter() - start, passed))
        else:
            raise SystemExit(f"unknown mode {mode!r}")

    print(f"\n{'mode':<28} {'seconds':>8} {'items/s':>9} {'passed':>7}")
    for label, seconds, passed in runs:
        print(f"{label:<28} {seconds:8.2f} {len(passed) / seconds:9.1f} {sum(passed):7d}")
    kinds_order = ("correct", "rewritten", "wrong")
    by_kind = {k: f"{sum(p for p, kk in zip(runs[-1][2], kinds) if kk == k)}/{kinds.count(k)}" for k in kinds_order}
    print(f"\npassed by kind (last mode): {by_kind}")
    if len({tuple(p) for _, _, p in runs}) > 1:
        print("WARNING: modes disagree on some verdicts (a timeout under load?)")


if __name__ == "__main__":
    main()
