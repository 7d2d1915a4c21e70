"""Instruction-following benchmarks: IFEval and IFBench (domain and verifier "instruct").

The prompt is the benchmark prompt unchanged (the instruct verifier checks it); reference
``instruction_id_list`` and ``kwargs`` (one dict per instruction). ``None`` kwargs are dropped:
IFBench's file fills every row with every parameter name set to null, and the reference
evaluation code also builds each checker from the non-null ones only.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.data.readers import read_jsonl
from posttrain.data.sources import register_source
from posttrain.records import Record, Reference


def _instruct(data_root: Path, rel: str, source: str) -> list[Record]:
    records = []
    for row in read_jsonl(data_root / rel):
        ids = row.str_list("instruction_id_list")
        kwargs = row.raw("kwargs")
        if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
            raise row.error("kwargs", "expected a list of objects")
        if len(kwargs) != len(ids):
            raise row.error("kwargs", f"{len(kwargs)} kwargs dicts for {len(ids)} instruction ids")
        prompt = row.text("prompt")
        records.append(
            Record(
                id=f"{source}/{row.answer('key')}",
                domain="instruct",
                prompt=prompt,
                verifier="instruct",
                reference=Reference(
                    instruction_id_list=ids,
                    kwargs=[{k: v for k, v in kw.items() if v is not None} for kw in kwargs],
                ),
                source=source,
                meta={"problem": prompt},
            )
        )
    return records


@register_source("ifeval", files=["benchmarks/ifeval.jsonl"], split="eval")
def ifeval(data_root: Path) -> list[Record]:
    """IFEval (541 prompts, 25 instruction types)."""
    return _instruct(data_root, "benchmarks/ifeval.jsonl", "ifeval")


@register_source("ifbench", files=["benchmarks/ifbench_test.jsonl"], split="eval")
def ifbench(data_root: Path) -> list[Record]:
    """IFBench out-of-distribution test set (300 prompts, 58 instruction types)."""
    return _instruct(data_root, "benchmarks/ifbench_test.jsonl", "ifbench")
