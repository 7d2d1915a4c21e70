"""A learnable, verifiable toy task for smoke tests with random tiny models: repeat the digits.

Prompt ``"Repeat the digits: 3 9 1 4"``, answer ``"3914"``. The "synthetic_digits" verifier gives
partial credit per matching digit, so even a random model sees rewards vary inside a group.
"""

from __future__ import annotations

import random
from pathlib import Path

from posttrain.data.prompts import digits_prompt
from posttrain.data.sources import register_source
from posttrain.records import Record, Reference

SOURCE = "synthetic_digits"
DEFAULT_SIZE = 64


def make_digit_records(n: int = DEFAULT_SIZE, seed: int = 0, length: int = 4, source: str = SOURCE) -> list[Record]:
    """``n`` digit-repetition records, the same for the same ``(n, seed, length)``.

    Each has domain "synthetic", verifier "synthetic_digits", reference answer and solution the
    digits without spaces (``"3914"``), id ``synthetic_digits/<seed>-<i>``.

    Raises:
        ValueError: if ``n`` < 0 or ``length`` < 1.
    """
    if n < 0 or length < 1:
        raise ValueError(f"make_digit_records: need n >= 0 and length >= 1, got n={n}, length={length}")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        digits = [rng.randrange(10) for _ in range(length)]
        answer = "".join(map(str, digits))
        records.append(
            Record(
                id=f"{source}/{seed}-{i}",
                domain="synthetic",
                prompt=digits_prompt(digits),
                verifier="synthetic_digits",
                reference=Reference(answer=answer, solution=answer),
                source=source,
                meta={"problem": digits_prompt(digits), "length": length},
            )
        )
    return records


@register_source(SOURCE, files=[], split="train")
def synthetic_digits(data_root: Path) -> list[Record]:
    """Synthetic digit repetition (64 records, seed 0, 4 digits); reads no file."""
    return make_digit_records(DEFAULT_SIZE, seed=0)


@register_source(f"{SOURCE}_1", files=[], split="train")
def synthetic_digit(data_root: Path) -> list[Record]:
    """One-digit repetition (64 records, seed 0): even a random tiny model gets some exactly right,
    so smoke runs have verified traces to distil."""
    return make_digit_records(DEFAULT_SIZE, seed=0, length=1, source=f"{SOURCE}_1")
