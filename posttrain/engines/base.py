"""The generation protocol shared by every sampling stage (filtering, distillation, evaluation)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Defaults are the report's evaluation settings (design.md §1.5).

    ``temperature = 0`` is greedy decoding; ``top_k = -1`` disables top-k; ``max_new_tokens`` is in
    tokens; ``seed`` makes runs repeatable.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = -1
    max_new_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """One sampled continuation: its text, its length in tokens, and why it stopped (``stop``/``length``)."""

    text: str
    num_tokens: int
    finish_reason: str


class GenerationEngine(Protocol):
    """Samples ``params.n`` completions per chat prompt: returns ``[len(prompts)][n]`` completions."""

    name: str

    def generate(self, prompts: Sequence[Messages], params: SamplingParams) -> list[list[Completion]]: ...

    def close(self) -> None: ...


_VLLM_DEFAULTS: ContextVar[dict] = ContextVar("vllm_defaults", default={})


@contextmanager
def vllm_defaults(**options) -> Iterator[None]:
    """vLLM engine options (e.g. ``tensor_parallel_size`` from the recipe's ``launch``) for every
    :func:`open_engine` call inside the block that does not set them itself."""
    token = _VLLM_DEFAULTS.set({**_VLLM_DEFAULTS.get(), **options})
    try:
        yield
    finally:
        _VLLM_DEFAULTS.reset(token)


def open_engine(kind: str, model_dir: Path, **options) -> GenerationEngine:
    """Open the engine ``kind`` (``hf`` or ``vllm``) on a Hugging Face model folder.

    A vLLM engine also takes the options of an enclosing :func:`vllm_defaults` block.

    Raises:
        ValueError: for an unknown kind.
    """
    if kind == "hf":
        from posttrain.engines.hf import HFEngine

        return HFEngine(model_dir, **options)
    if kind == "vllm":
        from posttrain.engines.vllm import VLLMEngine

        return VLLMEngine(model_dir, **{**_VLLM_DEFAULTS.get(), **options})
    raise ValueError(f"unknown engine {kind!r}: use 'hf' or 'vllm'")
