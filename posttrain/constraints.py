"""Instruct-RL prompts: IFEval-kind verifiable constraints attached to training prompts (3B §2.4).

Never built from IFEval or IFBench prompts: the base prompts come from training sources. The
constraint ids and kwargs follow IFEval's, so the shared ``instruct`` verifier grades them.
"""

from __future__ import annotations

import random
from typing import Callable

from posttrain.records import Record, Reference

# (instruction id, kwargs sampler, instruction text from kwargs)
Constraint = tuple[str, Callable[[random.Random], dict], Callable[[dict], str]]

CONSTRAINTS: list[Constraint] = [
    ("change_case:english_lowercase", lambda r: {},
     lambda k: "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."),
    ("change_case:english_capital", lambda r: {},
     lambda k: "Your entire response should be in English, and in all capital letters."),
    ("punctuation:no_comma", lambda r: {},
     lambda k: "In your entire response, refrain from the use of any commas."),
    ("startend:quotation", lambda r: {},
     lambda k: "Wrap your entire response with double quotation marks."),
    ("startend:end_checker", lambda r: {"end_phrase": r.choice(["Is there anything else I can help with?", "Hope this helps."])},
     lambda k: f"Finish your response with this exact phrase: {k['end_phrase']} No other words should follow this phrase."),
    ("length_constraints:number_words", lambda r: {"relation": "less than", "num_words": r.choice([20, 40, 60])},
     lambda k: f"Answer with less than {k['num_words']} words."),
    ("detectable_content:postscript", lambda r: {"postscript_marker": "P.S."},
     lambda k: "At the end of your response, please explicitly add a postscript starting with P.S."),
    ("detectable_format:title", lambda r: {},
     lambda k: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."),
    ("keywords:existence", lambda r: {"keywords": r.sample(["answer", "step", "result", "number", "total"], 2)},
     lambda k: f"Include keywords {', '.join(k['keywords'])} in the response."),
]


def attach_constraints(records: list[Record], per_prompt: int, seed: int) -> list[Record]:
    """One instruct record per input record with ``per_prompt`` distinct constraints appended.

    The instruction text is added after the base prompt; ids and kwargs go to the reference.
    """
    rng = random.Random(seed)
    out = []
    for rec in records:
        picked = rng.sample(CONSTRAINTS, per_prompt)
        ids, kwargs, texts = [], [], []
        for cid, sample, text in picked:
            kw = sample(rng)
            ids.append(cid)
            kwargs.append(kw)
            texts.append(text(kw))
        base = rec.meta.get("problem", rec.prompt)
        out.append(Record(id=f"instruct/{rec.id}", domain="instruct", prompt=f"{base}\n\n{' '.join(texts)}",
                          verifier="instruct", reference=Reference(instruction_id_list=ids, kwargs=kwargs),
                          source=f"constraints+{rec.source}", meta={"base_id": rec.id, "problem": base}))
    return out
