"""The one record schema every loader produces and every stage consumes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Domain = Literal["math", "code", "stem", "instruct", "dialogue", "synthetic"]


class Choice(BaseModel):
    """One option of a multiple-choice question."""

    model_config = ConfigDict(extra="forbid")
    label: str
    text: str


class Reference(BaseModel):
    """What a verifier needs to grade a completion, in the shapes of design.md §3.

    Only the fields of the record's verifier are set:
    - math: ``answer`` (a string, LaTeX allowed);
    - code: ``tests``: a list of ``{input, output}`` (stdin/stdout, optional ``checker``),
      ``{inputs: [...], outputs: [...]}``, ``{functional: program}`` or
      ``{asserts: [...], setup: "..."}``;
    - instruct: ``instruction_id_list`` and ``kwargs`` (IFEval/IFBench shape);
    - choice: ``choices`` and ``answer`` (a label);
    - synthetic: ``answer`` (the exact expected string).
    ``solution`` optionally holds a reference solution text (used as an SFT target).
    """

    model_config = ConfigDict(extra="forbid")
    answer: str | None = None
    tests: Any = None
    instruction_id_list: list[str] | None = None
    kwargs: list[dict[str, Any]] | None = None
    choices: list[Choice] | None = None
    solution: str | None = None

    def verifier_fields(self) -> dict[str, Any]:
        """The non-empty fields as the flat dict that verifiers and `posttrain grade` take."""
        out = self.model_dump(exclude_none=True, exclude={"solution"})
        return out


class Record(BaseModel):
    """One problem: ``prompt`` is the user turn; ``verifier`` names the registry entry that grades it."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    domain: Domain
    prompt: str = Field(min_length=1)
    verifier: str
    reference: Reference
    source: str
    meta: dict[str, Any] = Field(default_factory=dict)

    def chat(self) -> list[dict[str, str]]:
        """The prompt as a chat: one user turn, no system prompt (design.md §1.5)."""
        return [{"role": "user", "content": self.prompt}]

    def sft_pair(self, completion: str) -> dict[str, Any]:
        """A conversational prompt/completion example (TRL's format) answering this record."""
        return {"prompt": self.chat(), "completion": [{"role": "assistant", "content": completion}], "id": self.id}

    def verifier_reference(self) -> dict[str, Any]:
        """The reference fields its verifier takes, plus ``prompt`` (instruction checkers read it)."""
        return {**self.reference.verifier_fields(), "prompt": self.prompt}
