"""The verifier registry: one definition of "correct" for rewards, filters and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol


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
        KeyError: naming the unknown verifier and the registered ones.
    """
    from posttrain import verifiers as _  # noqa: F401  (imports every verifier module)

    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown verifier {name!r}; registered: {sorted(_REGISTRY)}") from None
    return factory()


def registered_verifiers() -> list[str]:
    """Names of all registered verifiers, sorted."""
    from posttrain import verifiers as _  # noqa: F401

    return sorted(_REGISTRY)
