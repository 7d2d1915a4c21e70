"""Instruct-RL prompts: IFEval-kind verifiable constraints attached to training prompts (3B §2.4).

Never built from IFEval or IFBench prompts: the base prompts come from training sources, and
:func:`check_decontaminated` refuses any whose normalised 10-grams occur in an IFEval or
IFBench prompt. The constraint ids and kwargs follow IFEval's, so the shared ``instruct``
verifier grades them; each record keeps them in its reference and in ``meta["constraints"]``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

from posttrain.records import Record, Reference

# (instruction id, kwargs sampler, instruction text from kwargs)
Constraint = tuple[str, Callable[[random.Random], dict], Callable[[dict], str]]

_WORDS = ["answer", "step", "result", "number", "total", "reason", "check", "value"]

CONSTRAINTS: list[Constraint] = [
    # case
    ("change_case:english_lowercase", lambda r: {},
     lambda k: "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."),
    ("change_case:english_capital", lambda r: {},
     lambda k: "Your entire response should be in English, and in all capital letters."),
    ("change_case:capital_word_frequency", lambda r: {"capital_frequency": r.choice([2, 3]), "capital_relation": "at least"},
     lambda k: f"In your response, words with all capital letters should appear at least {k['capital_frequency']} times."),
    # punctuation
    ("punctuation:no_comma", lambda r: {},
     lambda k: "In your entire response, refrain from the use of any commas."),
    # start / end (ordering)
    ("startend:quotation", lambda r: {},
     lambda k: "Wrap your entire response with double quotation marks."),
    ("startend:end_checker", lambda r: {"end_phrase": r.choice(["Is there anything else I can help with?", "Hope this helps."])},
     lambda k: f"Finish your response with this exact phrase: {k['end_phrase']} No other words should follow this phrase."),
    ("combination:repeat_prompt", None,  # filled per record: the base prompt itself
     lambda k: "First repeat the request word for word without change, then give your answer (1. do not say any "
               "words or characters before repeating the request; 2. the request you need to repeat does not "
               "include this sentence)"),
    # length and counts
    ("length_constraints:number_words", lambda r: {"relation": "less than", "num_words": r.choice([20, 40, 60])},
     lambda k: f"Answer with less than {k['num_words']} words."),
    ("length_constraints:number_sentences", lambda r: {"relation": "less than", "num_sentences": r.choice([3, 5])},
     lambda k: f"Your response should contain less than {k['num_sentences']} sentences."),
    ("length_constraints:number_paragraphs", lambda r: {"num_paragraphs": r.choice([2, 3])},
     lambda k: f"There should be {k['num_paragraphs']} paragraphs. Paragraphs are separated with the markdown divider: ***"),
    # content
    ("detectable_content:postscript", lambda r: {"postscript_marker": "P.S."},
     lambda k: "At the end of your response, please explicitly add a postscript starting with P.S."),
    # format
    ("detectable_format:title", lambda r: {},
     lambda k: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."),
    ("detectable_format:json_format", lambda r: {},
     lambda k: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."),
    ("detectable_format:number_bullet_lists", lambda r: {"num_bullets": r.choice([2, 3, 4])},
     lambda k: f"Your answer must contain exactly {k['num_bullets']} bullet points. Use the markdown bullet "
               f"points such as:\n* This is point 1.\n* This is point 2"),
    ("detectable_format:multiple_sections", lambda r: {"section_spliter": "Section", "num_sections": r.choice([2, 3])},
     lambda k: f"Your response must have {k['num_sections']} sections. Mark the beginning of each section with "
               f"{k['section_spliter']} X, such as: {k['section_spliter']} 1"),
    ("detectable_format:number_highlighted_sections", lambda r: {"num_highlights": r.choice([1, 2])},
     lambda k: f"Highlight at least {k['num_highlights']} sections in your answer with markdown, i.e. *highlighted section*."),
    # keywords
    ("keywords:existence", lambda r: {"keywords": r.sample(_WORDS, 2)},
     lambda k: f"Include keywords {', '.join(k['keywords'])} in the response."),
    ("keywords:forbidden_words", lambda r: {"forbidden_words": r.sample(_WORDS, 2)},
     lambda k: f"Do not include keywords {', '.join(k['forbidden_words'])} in the response."),
    ("keywords:frequency", lambda r: {"keyword": r.choice(_WORDS), "frequency": r.choice([2, 3]), "relation": "at least"},
     lambda k: f"In your response, the word {k['keyword']} should appear at least {k['frequency']} times."),
    ("keywords:letter_frequency", lambda r: {"letter": r.choice("aeiou"), "let_frequency": r.choice([3, 5]),
                                             "let_relation": "at least"},
     lambda k: f"In your response, the letter {k['letter']} should appear at least {k['let_frequency']} times."),
]
CONSTRAINT_IDS = [c[0] for c in CONSTRAINTS]

# Pairs no response can satisfy together (after IFEval's INSTRUCTION_CONFLICTS); never drawn together.
_FORMAT = ["startend:quotation", "startend:end_checker", "combination:repeat_prompt", "detectable_content:postscript",
           "detectable_format:title", "detectable_format:number_bullet_lists", "detectable_format:multiple_sections",
           "detectable_format:number_highlighted_sections", "length_constraints:number_paragraphs"]
_CONFLICTS = {frozenset(pair) for pair in [
    ("change_case:english_lowercase", "change_case:english_capital"),
    ("change_case:english_lowercase", "change_case:capital_word_frequency"),
    ("startend:quotation", "startend:end_checker"), ("startend:quotation", "detectable_content:postscript"),
    ("startend:quotation", "combination:repeat_prompt"), ("startend:end_checker", "detectable_content:postscript"),
    ("keywords:existence", "keywords:forbidden_words"), ("keywords:frequency", "keywords:forbidden_words"),
    *(("detectable_format:json_format", f) for f in _FORMAT),
]}


def _draw(rng: random.Random, pool: list[Constraint], k: int) -> list[Constraint]:
    """``k`` distinct constraints without a conflicting pair (uniform over the pool, in draw order)."""
    picked: list[Constraint] = []
    for c in rng.sample(pool, len(pool)):
        if all(frozenset((c[0], p[0])) not in _CONFLICTS for p in picked):
            picked.append(c)
        if len(picked) == k:
            return picked
    raise ValueError(f"cannot draw {k} compatible constraints from {[c[0] for c in pool]}")


def attach_constraints(records: list[Record], per_prompt: int, seed: int,
                       kinds: Sequence[str] | None = None) -> list[Record]:
    """One instruct record per input record with ``per_prompt`` distinct constraints appended.

    ``kinds`` restricts the constraint ids drawn from (default: all of :data:`CONSTRAINTS`). The
    instruction text follows the base prompt; ids and kwargs go to the reference and to
    ``meta["constraints"]`` (``[{"id", "kwargs"}]``), so every drawn parameter is recorded.

    Raises:
        ValueError: for an unknown constraint id, or ``per_prompt`` above the kinds available.
    """
    pool = [c for c in CONSTRAINTS if kinds is None or c[0] in kinds]
    unknown = sorted(set(kinds or []) - set(CONSTRAINT_IDS))
    if unknown or per_prompt > len(pool):
        raise ValueError(f"constraints: unknown kinds {unknown} or {per_prompt} per prompt from {len(pool)} kinds; "
                         f"known: {CONSTRAINT_IDS}")
    rng = random.Random(seed)
    out = []
    for rec in records:
        base = rec.meta.get("problem", rec.prompt)
        picked = _draw(rng, pool, per_prompt)
        ids, kwargs, texts = [], [], []
        for cid, sample, text in picked:
            kw = {"prompt_to_repeat": base} if sample is None else sample(rng)
            ids.append(cid)
            kwargs.append(kw)
            texts.append(text(kw))
        out.append(Record(id=f"instruct/{rec.id}", domain="instruct", prompt=f"{base}\n\n{' '.join(texts)}",
                          verifier="instruct", reference=Reference(instruction_id_list=ids, kwargs=kwargs),
                          source=f"constraints+{rec.source}",
                          meta={"base_id": rec.id, "problem": base,
                                "constraints": [{"id": i, "kwargs": k} for i, k in zip(ids, kwargs)]}))
    return out


# ------------------------------------------------------------------------------ decontamination
HELD_OUT = ("ifeval", "ifbench")  # benchmark sources whose prompts must never be trained on


def check_decontaminated(records: Sequence[Record], data_root: str | Path | None, n: int = 10) -> dict:
    """Refuse instruct training prompts that come from, or overlap, the IFEval/IFBench test prompts.

    A base prompt (``meta["problem"]`` or the prompt) is contaminated when its source is a held-out
    benchmark or it shares any normalised word ``n``-gram with one of their prompts.

    Returns:
        ``{"checked", "benchmark_prompts", "ngram"}`` when clean.

    Raises:
        ValueError: naming the contaminated record ids and the benchmark prompt they match.
    """
    from posttrain.data import load_mixture
    from posttrain.eval.decontam import ngram_hashes

    held = load_mixture([{"source": s} for s in HELD_OUT], data_root)
    index: dict[int, str] = {}
    for r in held:
        for g in ngram_hashes(r.prompt, n):
            index.setdefault(g, r.id)
    bad = []
    for r in records:
        base_source = r.source.split("+")[-1]
        if base_source in HELD_OUT:
            bad.append(f"{r.id} (from {base_source})")
            continue
        hit = next((index[g] for g in ngram_hashes(r.meta.get("problem", r.prompt), n) if g in index), None)
        if hit:
            bad.append(f"{r.id} (shares a {n}-gram with {hit})")
    if bad:
        raise ValueError(f"instruct RL prompts overlap IFEval/IFBench test prompts: {bad[:10]}"
                         f"{f' and {len(bad) - 10} more' if len(bad) > 10 else ''}")
    return {"checked": len(records), "benchmark_prompts": len(held), "ngram": n}
