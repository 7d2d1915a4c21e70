"""The verifier registry: one definition of "correct" for rewards, filters and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class Verdict:
    """Result of grading one completion.

    ``score`` lies in [0, 1]; ``passed`` is the binary verdict (e.g. all tests passed);
    ``details`` holds what a person needs to audit it (parsed answer, per-test verdicts, reason).
    """

    score: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    """Grades a completion against the reference fields of one record (design.md §3 shapes)."""

    name: str

    def verify(self, completion: str, reference: Mapping[str, Any]) -> Verdict: ...


_REGISTRY: dict[str, Callable[[], Verifier]] = {}


class UnknownVerifierError(KeyError, ValueError):
    """A verifier name that is not registered; the message lists the registered ones.

    A ``KeyError`` for code that looks names up, a ``ValueError`` for code that validates input;
    ``str()`` is the plain message.
    """

    def __init__(self, name: str, registered: Sequence[str]) -> None:
        self.name, self.registered = name, list(registered)
        super().__init__(f"unknown verifier {name!r}; registered: {', '.join(self.registered)}")

    def __str__(self) -> str:
        return str(self.args[0])


def register_verifier(name: str) -> Callable[[Callable[[], Verifier]], Callable[[], Verifier]]:
    """Class decorator that registers a verifier factory under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def wrap(factory: Callable[[], Verifier]) -> Callable[[], Verifier]:
        if name in _REGISTRY:
            raise ValueError(f"verifier {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_verifier(name: str) -> Verifier:
    """Return a new instance of the verifier registered as ``name``.

    Raises:
        UnknownVerifierError: (a ``KeyError``) naming the unknown verifier and the registered ones.
    """
    from posttrain import verifiers as _  # noqa: F401  (imports every verifier module)

    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name from malformed input
        raise UnknownVerifierError(str(name), sorted(_REGISTRY)) from None
    return factory()


def registered_verifiers() -> list[str]:
    """Names of all registered verifiers, sorted."""
    from posttrain import verifiers as _  # noqa: F401

    return sorted(_REGISTRY)


def verify_all(names: Sequence[str], completions: Sequence[str], references: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    """Grade ``completions[i]`` with verifier ``names[i]`` against ``references[i]``; same order.

    Completions of one verifier go through its ``verify_batch`` where it has one (math grades in
    worker processes, code runs concurrent sandboxes), so a batch of ``[batch * group_size]``
    rollouts uses every core.

    Raises:
        ValueError: if the three sequences differ in length; whatever a verifier raises.
        UnknownVerifierError: (a ``KeyError``) for an unknown verifier name.
    """
    if not (len(names) == len(completions) == len(references)):
        raise ValueError(f"{len(names)} verifier names, {len(completions)} completions, {len(references)} references")
    rows_by_name: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows_by_name.setdefault(name, []).append(i)
    verdicts: list[Verdict | None] = [None] * len(names)
    for name, rows in rows_by_name.items():
        verifier = get_verifier(name)
        texts, refs = [completions[i] for i in rows], [references[i] for i in rows]
        batch = getattr(verifier, "verify_batch", None)
        graded = batch(texts, refs) if batch else [verifier.verify(t, r) for t, r in zip(texts, refs)]
        for i, verdict in zip(rows, graded, strict=True):
            verdicts[i] = verdict
    return verdicts  # type: ignore[return-value]


def verify_groups(records: Sequence[Any], groups: Sequence[Sequence[Any]]) -> list[list[Verdict]]:
    """Grade each record's group of completions with its own verifier, in one :func:`verify_all` batch.

    Args:
        records: objects with ``verifier`` and ``verifier_reference()`` (``posttrain.records.Record``).
        groups: ``[len(records)][k_i]`` completions: strings or objects with a ``text`` field.

    Returns:
        ``[len(records)][k_i]`` verdicts, in the same layout.
    """
    names, texts, refs, sizes = [], [], [], []
    for record, group in zip(records, groups, strict=True):
        reference = record.verifier_reference()
        names += [record.verifier] * len(group)
        texts += [c if isinstance(c, str) else c.text for c in group]
        refs += [reference] * len(group)
        sizes.append(len(group))
    flat, out, start = verify_all(names, texts, refs), [], 0
    for size in sizes:
        out.append(flat[start:start + size])
        start += size
    return out
