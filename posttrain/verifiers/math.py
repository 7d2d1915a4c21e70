"""Math verifier: the final answer (last ``\\boxed{}`` after the reasoning block) against a gold answer.

Pipeline for one (completion, gold) pair:
1. Extract: the last balanced ``\\boxed{}`` after ``</think>`` (or in the whole text when there is
   no reasoning block), else the last "final answer" line. Only this string is parsed, never the
   raw completion: math-verify's ``parse`` finds bare numbers in unboxed text (design.md §4).
2. Cheap checks in the calling process (``quick_reason``): equal after normalising spacing and
   markup; integer literals by value (``025`` = ``25``: AIME never needs sympy); decimal literals
   exactly; numerals with a base (``52_8``) by digits and base.
3. Golds written in words ("odd $n$", "All powers of 2", "$f(x)=...$ for some $a>0$") are
   compared as normalised text only: math-verify would turn them into nonsense products of
   symbols (``odd n`` -> ``n``, so ``\\boxed{n}`` would pass). A paraphrase fails.
4. Everything else goes to math-verify (sympy) after ``prepare_for_math_verify``:
   ``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{2}/2`` = ``\\frac{\\sqrt2}{2}``, ``2\\sqrt3`` = ``\\sqrt{12}``;
   two exact rationals must then be exactly equal (math-verify alone takes 1/2^98 = 2/2^98).

What math-verify does with answers of several parts (pinned by the tests):
- a comma list is a set: ``1, -2`` = ``-2, 1`` = ``\\{-2, 1\\}`` = ``x=1, x=-2``; a missing or extra
  element fails; ``a \\pm b`` is the set of both (we also expand a ``\\pm`` inside a fraction);
- a parenthesised list is an ordered tuple: ``(3,2,5)`` != ``(2,3,5)``; a pair ``(1,2)`` is also
  read as an open interval, and ``1, 2`` = ``(1, 2)``; ``[a,b]`` != ``(a,b)``;
- ``x = 5`` = ``5`` and ``y = 2x+3`` = ``2x+3`` (the right-hand side counts);
- units in ``\\text{}`` and ``^\\circ`` are dropped, not checked (``15\\mbox{ cm}^2`` = ``15`` =
  ``15\\mbox{ cm}^3``; ``90^\\circ`` != ``\\frac{\\pi}{2}``); a bare trailing letter is kept as a
  variable (``2-2m`` != ``0``, "5 m" != 5), bare "cm", "kg", "ft"... are dropped ("5 cm" = 5);
- ``\\text{(C)}`` = ``C`` = ``(C)``; ``10\\%`` = ``0.1``; upper and lower case letters are the same.

Where math-verify runs, and why:
- math-verify times out with ``signal.alarm``, which works only on a process's main thread.
- Called on the main thread, a single comparison runs in-process under math-verify's own signal
  timeouts (``SIGNAL_TIMEOUT_S``): no inter-process cost, as in the grade CLI's workers. A hang in
  C code (a huge integer power) cannot be interrupted there; this path trusts the signal timeout.
- Called off the main thread (Prefect tasks, trainer threads), and for every batch of two or
  more comparisons, they run in a module-level ``WorkerPool`` (spawned processes, see
  ``workers.py``) whose main threads use the signal timeouts, and each item also has a hard
  wall-clock limit (``timeout_s``): a worker still busy then is killed (only that one; the pool
  starts a fresh one when needed) and the item gets reason "timeout", score 0. A worker that
  dies gives reason "grader error". Distinct (gold, answer) pairs are graded once per batch.
- The pool starts lazily on first use, grows to at most ``configure_pool(max_workers)`` processes
  (default: the CPUs available), survives worker crashes, and is closed at interpreter exit.
- A daemonic process may not start children: there everything runs in-process (off its main
  thread with no timeout at all, as a last resort).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import re
import threading
from decimal import Decimal
from typing import Any, Literal, Mapping, Sequence

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Add, Mul, Pow, Rational, preorder_traversal

from posttrain.verifiers.base import Verdict, register_verifier
from posttrain.verifiers.workers import Outcome, WorkerPool

logger = logging.getLogger(__name__)

Reason = Literal["correct", "wrong answer", "no answer found", "timeout", "grader error"]

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The final answer is $x$." / "Answer: x" / "**Final Answer:** x" — the last one wins.
_ANSWER_LINE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:)\s*\**\s*:?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_EXTRACTION = [LatexExtractionConfig(), ExprExtractionConfig()]
# math-verify's own per-step timeout (parse of each side, each comparison), in whole seconds
# (signal.alarm). One item can take several steps, so the hard limit below is larger.
SIGNAL_TIMEOUT_S = 3
# Hard wall-clock limit per item in a worker process, seconds.
ITEM_TIMEOUT_S = 10.0
# Address space a worker may add after start-up (MiB): a pathological power such as
# 10^{10^{10}} fails with MemoryError instead of swapping the machine. None disables the cap.
# Relative to the size after start-up, because spawn re-imports the parent's main script
# (torch and CUDA libraries can map many GiB of address space before the cap is set).
WORKER_MEMORY_HEADROOM_MB: int | None = 4096


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
def after_reasoning(text: str) -> str | None:
    """Return the text after the last ``</think>``, or all of it when there is no reasoning block.

    Returns None when a ``<think>`` block was opened but never closed (a completion cut off while
    reasoning has no final answer).
    """
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def extract_boxed(text: str) -> str | None:
    """Return the contents of the last balanced ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Braces are matched with nesting (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); an
    unbalanced (truncated) box is skipped in favour of an earlier complete one. None if no
    complete box exists.
    """
    boxes = list(_BOX_OPEN.finditer(text))
    if not boxes:
        return None
    # One pass pairs every brace from the first box on (linear: a scan per box would be
    # quadratic on a long run of unclosed boxes); the scan of each box is the same as before.
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i in range(boxes[0].end() - 1, len(text)):
        if text[i] == "{":
            stack.append(i)
        elif text[i] == "}" and stack:
            closing[stack.pop()] = i
    for match in reversed(boxes):
        end = closing.get(match.end() - 1)
        if end is not None:
            return text[match.end():end].strip()
    return None


def _strip_answer_line(answer: str) -> str:
    """Remove math delimiters, markdown emphasis and a trailing full stop from an answer line."""
    answer = answer.strip().strip("*").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.rstrip(".").endswith(right) and len(answer) > 1:
            answer = answer.rstrip(".")[len(left) : -len(right)]
            break
    return answer.strip().rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The answer a completion commits to: last box after the reasoning, else a final-answer line.

    Returns None when there is none (including a completion cut off inside ``<think>``).
    """
    text = after_reasoning(completion)
    if text is None:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    lines = _ANSWER_LINE.findall(text)
    if lines:
        answer = extract_boxed(lines[-1]) or _strip_answer_line(lines[-1])
        return answer or None
    return None


# ---------------------------------------------------------------------------------------------
# Normalisation and the cheap checks
# ---------------------------------------------------------------------------------------------
_TEXT_WRAPPER = re.compile(r"\\(?:text(?:bf|it|rm|normal)?|mbox|mathrm|textup)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)(?![A-Za-z])|~|\s+")
_ELLIPSIS = re.compile(r"\\(?:ldots|cdots|dots)(?![A-Za-z])|\.\.\.|…")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
# A numeral with its base: 52_8, 4210_{5}. math-verify drops the subscript (52_8 = 52_9 there).
_BASED = re.compile(r"(\d[0-9A-Za-z]*)_\{?(\d+)\}?")
# Words that only occur in answers written as prose ("odd $n$", "n is prime", "for some $a$").
_PROSE_WORDS = frozenset(
    "all and any are but each even every except excluding for form if is no none not number numbers "
    "odd of or otherwise positive negative nonnegative prime primes integer integers power powers "
    "multiple multiples real solution solutions some such that the there when where which with".split()
)
# Spacing that hides a token: "\phantom -1" shows 1.
_PHANTOM = re.compile(r"\\phantom\s*(?:\{[^{}]*\}|\S)")
# "\frac\pi 2": math-verify brace-fixes \frac12 but misparses a command argument (2007 + \frac\pi 2 -> 2).
_SYMBOL = (r"\\(?:pi|infty|alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|kappa|lambda|mu|nu|xi"
           r"|rho|sigma|tau|phi|varphi|chi|psi|omega)(?![A-Za-z])")
_BRACELESS_FRAC = re.compile(rf"\\([dt]?frac)\s*({_SYMBOL}|\d)\s*({_SYMBOL}|\d|[A-Za-z])")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")
# A trailing 1-2 letter run after a digit, "}" or a space: math-verify's unit stripping would drop
# it (it treats m, s, h, t, d, g, ab, st, ... as units), so "2-2m" would become 0. Braces hide it;
# common two-letter unit abbreviations ("5 cm") are left to be stripped.
_TRAILING_LETTERS = re.compile(r"(?<=[\d}\s])(?!(?:cm|mm|km|kg|mg|ml|ft|hr|lb|mi|yd|oz)\s*$)([A-Za-z]{1,2})(\s*)$")


def _strip_delimiters(answer: str) -> str:
    """Drop math delimiters (``$``, ``\\(``, ``\\)``, outer ``\\[ \\]``), currency ``\\$`` and a final full stop."""
    s = answer.strip().rstrip(".").strip()
    s = s.replace("\\$", "")
    s = _UNESCAPED_DOLLAR.sub("", s).replace("\\(", "").replace("\\)", "")
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    return s.strip().rstrip(".").strip()


def canonical(answer: str) -> str:
    """A spelling-insensitive form for exact matching: no delimiters, spacing macros or ``\\text``.

    ``$\\dfrac{1}{2}$`` -> ``\\frac{1}{2}``; ``\\text{(A)}`` -> ``(A)``; ``10,\\!080`` -> ``10,080``.
    Case is kept (``R`` and ``r`` may be different quantities).
    """
    s = _strip_delimiters(answer)
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _ELLIPSIS.sub("...", s)
    return _SPACING.sub("", s).rstrip(".")


def is_prose(gold: str) -> bool:
    """True if ``gold`` is (partly) written in words, so only a textual match can grade it.

    Signs: a line break inside it (piecewise answers), an English word from a fixed list or any
    letter run of 4+ outside LaTeX commands and ``\\text{}`` (``odd $n$``, ``All powers of 2``,
    ``$g(x)=...$ for some $a>0$``), or an ellipsis (``$1,2,\\ldots,1235$`` would parse as {1,2,1235}).
    """
    if "\n" in gold.strip() or _ELLIPSIS.search(gold):
        return True
    s = _TEXT_WRAPPER.sub(" ", gold)
    s = re.sub(r"\\(?:begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+", " ", s)
    return any(len(w) >= 4 or w.lower() in _PROSE_WORDS for w in re.findall(r"[A-Za-z]+", s))


def _text_key(answer: str) -> str:
    """Comparison key for prose answers: ``canonical`` lower-cased, without trailing punctuation."""
    return canonical(answer).lower().rstrip(".,;:")


def prepare_for_math_verify(answer: str) -> str:
    """The answer as math-verify should see it: no delimiters, a trailing short letter run braced,
    a single ``\\pm`` expanded into the two roots.

    ``$2-2m$`` -> ``2-2{m}`` (math-verify would strip ``m`` as a unit); ``\\$18.90`` -> ``18.90``;
    ``\\frac{-1\\pm\\sqrt{17}}{2}`` -> ``\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}`` (math-verify
    expands ``\\pm`` only at the top level); ``\\frac\\pi 2`` -> ``\\frac{\\pi}{2}``; ``\\phantom -1`` -> ``1``.
    Applied to gold and prediction alike.
    """
    s = _PHANTOM.sub("", _strip_delimiters(answer))
    s = _BRACELESS_FRAC.sub(r"\\\1{\2}{\3}", s)
    s = _TRAILING_LETTERS.sub(r"{\1}\2", s)
    if len(_PLUS_MINUS.findall(s)) == 1 and "," not in s:
        s = f"{_PLUS_MINUS.sub('+', s)}, {_PLUS_MINUS.sub('-', s)}"
    return s


def _same_integer(a: str, b: str) -> bool:
    """Two integer literals (``_INTEGER``) by value, ``025`` = ``25``, however long: ``int()``
    refuses more than 4300 digits (ValueError), so long ones are compared by their digits."""
    try:
        return int(a) == int(b)
    except ValueError:
        def key(s: str) -> str:
            digits = s.lstrip("+-").lstrip("0") or "0"
            return f"-{digits}" if s.startswith("-") and digits != "0" else digits

        return key(a) == key(b)


def quick_reason(gold: str, predicted: str) -> Reason | None:
    """Decide without sympy where possible: "correct", "wrong answer", or None (needs math-verify).

    Exact match after ``canonical``; two integer literals by value (``025`` = ``25``); two decimal
    literals exactly (math-verify rounds to 6 places, so it takes 0.0000672 = 0.0000673);
    numerals with a base (``52_8``) by digits and base; prose golds by ``_text_key``.
    """
    g, p = canonical(gold), canonical(predicted)
    if not p:
        return "wrong answer"
    if g == p:
        return "correct"
    if _INTEGER.fullmatch(g) and _INTEGER.fullmatch(p):
        return "correct" if _same_integer(g, p) else "wrong answer"
    if _DECIMAL.fullmatch(g) and _DECIMAL.fullmatch(p):
        return "correct" if Decimal(g) == Decimal(p) else "wrong answer"
    based_gold, based_pred = _BASED.fullmatch(g), _BASED.fullmatch(p)
    if based_gold and (based_pred or _INTEGER.fullmatch(p)):  # "52" answers "52_8": the base is asked
        digits, base = (based_pred[1], based_pred[2]) if based_pred else (p, based_gold[2])
        same = digits.lstrip("0").lower() == based_gold[1].lstrip("0").lower() and _same_integer(base, based_gold[2])
        return "correct" if same else "wrong answer"
    if is_prose(gold):
        return "correct" if _text_key(gold) == _text_key(predicted) else "wrong answer"
    return None


# ---------------------------------------------------------------------------------------------
# math-verify, in-process or in worker processes
# ---------------------------------------------------------------------------------------------
def math_verify_equal(gold: str, predicted: str, timeout_s: int = SIGNAL_TIMEOUT_S) -> bool:
    """math-verify's verdict on two prepared answers (``prepare_for_math_verify`` output).

    Must run on a main thread: math-verify's ``signal.alarm`` timeouts (``timeout_s`` whole
    seconds per step; a step that times out counts as not equal). Where math-verify says equal
    and both sides are exact rational numbers, they must also be exactly equal.

    Raises:
        ValueError: when called off the main thread with ``timeout_s > 0``.
    """
    gold_parsed = parse(f"${gold}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
    pred_parsed = parse(f"${predicted}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    if not verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s):
        return False
    if "%" in gold or "%" in predicted:  # math-verify's rule 9% = 9 stands
        return True
    exact_gold, exact_pred = _exact_rational(gold_parsed[0]), _exact_rational(pred_parsed[0])
    return exact_gold is None or exact_pred is None or exact_gold == exact_pred


def _exact_rational(expr: Any) -> Any:
    """The value of an exact rational expression (``\\frac{1}{2^{98}}``), else None.

    math-verify compares numbers with ``evalf(chop=True)``, which takes 1/2^98 = 2/2^98 (both
    chop to 0): two exact rationals must be equal exactly. Only integer powers up to 10^4 in
    absolute value are evaluated (no factorials): this must stay cheap.
    """
    if getattr(expr, "is_Rational", False):
        return expr
    if not isinstance(expr, (Add, Mul, Pow)) or not expr.is_number:
        return None
    for node in preorder_traversal(expr):
        if isinstance(node, Pow) and not (node.exp.is_Integer and abs(node.exp) <= 10_000):
            return None
        if not isinstance(node, (Add, Mul, Pow, Rational)):
            return None
    value = expr.doit()
    return value if value.is_Rational else None


def _init_worker() -> None:
    """Worker start-up: cap the address space, and parse once so the first item is not slow."""
    if WORKER_MEMORY_HEADROOM_MB is not None and os.path.exists("/proc/self/statm"):
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + WORKER_MEMORY_HEADROOM_MB * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are reported by us
    math_verify_equal("\\frac{1}{2}", "0.5")


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()
_pool_max_workers: int | None = None


def configure_pool(max_workers: int | None = None) -> None:
    """Set the most worker processes the shared pool may start (None: the CPUs available).

    Closes the current pool, if any; the next batch or off-main-thread call starts a new one.

    Raises:
        ValueError: if ``max_workers < 1``.
    """
    global _pool, _pool_max_workers
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    with _pool_lock:
        _pool_max_workers = max_workers
        old, _pool = _pool, None
    if old is not None and old.pid == os.getpid():
        old.close()


def get_pool() -> WorkerPool:
    """The shared worker pool, created on first use (and anew in a forked child)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = WorkerPool(_pool_max_workers, preload=(__name__,), initializer=_init_worker,
                               bare_packages=("posttrain.verifiers",))
        return _pool


@atexit.register
def shutdown_pool() -> None:
    """Kill the shared pool's workers (registered with ``atexit``; safe to call any time)."""
    global _pool
    with _pool_lock:
        old, _pool = _pool, None
    if old is not None and old.pid == os.getpid():
        old.close()


def _reason(outcome: Outcome) -> Reason:
    if outcome.status == "ok":
        return "correct" if outcome.value else "wrong answer"
    if outcome.status == "timeout":
        return "timeout"
    logger.warning("math verifier worker failed: %s %s", outcome.status, outcome.error)
    return "grader error"


# The function the workers run, looked up at call time so a test can substitute a hanging one.
_worker_task = math_verify_equal


def _math_verify_many(pairs: list[tuple[str, str]], timeout_s: float) -> list[Reason]:
    """math-verify on prepared (gold, predicted) pairs: in-process or across the worker pool."""
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and len(pairs) == 1 and _worker_task is math_verify_equal:
        return ["correct" if math_verify_equal(*pairs[0]) else "wrong answer"]
    if multiprocessing.current_process().daemon:  # daemonic processes may not start workers
        limit = SIGNAL_TIMEOUT_S if on_main else None
        return ["correct" if math_verify_equal(g, p, limit) else "wrong answer" for g, p in pairs]
    task = _worker_task
    outcomes = get_pool().map(task, [(g, p, SIGNAL_TIMEOUT_S) for g, p in pairs], timeout_s)
    return [_reason(o) for o in outcomes]


def judge_answers(pairs: Sequence[tuple[str, str]], timeout_s: float = ITEM_TIMEOUT_S) -> list[Reason]:
    """Compare N (gold, predicted) answer strings; return N reasons in the same order.

    Each reason is "correct", "wrong answer", "timeout" (an item ran past ``timeout_s`` wall
    seconds in a worker and was killed) or "grader error" (its worker crashed). Cheap checks
    run here; the rest go to math-verify (see the module docstring for where).

    Raises:
        WorkerStartError: if worker processes cannot start at all.
    """
    reasons: list[Reason | None] = [quick_reason(g, p) for g, p in pairs]
    # A group of samples often repeats an answer: grade each distinct pair once.
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (g, p) in enumerate(pairs):
        if reasons[i] is None:
            todo.setdefault((prepare_for_math_verify(g), prepare_for_math_verify(p)), []).append(i)
    if todo:
        for indices, reason in zip(todo.values(), _math_verify_many(list(todo), timeout_s)):
            for i in indices:
                reasons[i] = reason
    return reasons  # type: ignore[return-value]


def answers_equivalent(gold: str, predicted: str, timeout_s: float = ITEM_TIMEOUT_S) -> bool:
    """True if ``predicted`` equals ``gold`` as mathematics (math-verify), or as normalised text.

    Safe on any thread (see ``judge_answers``); a timeout counts as not equivalent.
    """
    return judge_answers([(gold, predicted)], timeout_s)[0] == "correct"


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------
def _gold(reference: Mapping[str, Any]) -> str:
    gold = reference.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"math reference needs a non-empty string 'answer', got {gold!r}")
    return gold


@register_verifier("math")
class MathVerifier:
    """Final-answer check for math problems: reference ``answer`` (a string, LaTeX allowed).

    Args:
        timeout_s: hard wall-clock limit per item when graded in a worker process, seconds.
    """

    name = "math"
    reference_fields = ("answer",)

    def __init__(self, timeout_s: float = ITEM_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict:
        """Grade ``completion`` against ``reference["answer"]``; safe on any thread.

        Returns score 1.0/0.0 and details ``{"extracted", "gold", "reason"}``; reason is one of
        "correct", "wrong answer", "no answer found", "timeout", "grader error".

        Raises:
            ValueError: if the reference has no non-empty string ``answer``.
        """
        return self.verify_batch([completion], [reference])[0]

    def verify_batch(self, completions: Sequence[str], references: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        """Grade N completions against N references in parallel worker processes; keep the order.

        Meant for RL rewards (N = batch * group_size): cheap checks run here, the rest across
        the shared pool, each item under ``timeout_s`` seconds. Verdicts as in ``verify``.

        Raises:
            ValueError: if the lengths differ or a reference has no non-empty string ``answer``.
        """
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        golds = [_gold(r) for r in references]
        extracted = [extract_answer(c) for c in completions]
        graded = [i for i, e in enumerate(extracted) if e is not None]
        reasons: list[Reason] = ["no answer found"] * len(completions)
        for i, reason in zip(graded, judge_answers([(golds[i], extracted[i]) for i in graded], self.timeout_s)):
            reasons[i] = reason
        return [
            Verdict(float(r == "correct"), r == "correct", {"extracted": e, "gold": g, "reason": r})
            for e, g, r in zip(extracted, golds, reasons)
        ]
