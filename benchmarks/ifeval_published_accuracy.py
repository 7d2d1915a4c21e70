"""Check the `instruct` verifier against IFEval's published GPT-4 accuracies (not a timed test).

IFEval (Zhou et al. 2023, arXiv:2311.07911, Table 3) reports for GPT-4's responses
prompt-level strict 76.89 %, instruction-level strict 83.57 %, prompt-level loose 79.30 %,
instruction-level loose 85.37 % of 541 prompts / 834 instructions, i.e. exactly 416, 697, 429
and 712. The responses are `instruction_following_eval/data/input_response_data_gpt4_20231107_145030.jsonl`
of google-research/google-research (Apache-2.0; not shipped here: this machine cannot download it).

Run:
    .venv/bin/python benchmarks/ifeval_published_accuracy.py --responses input_response_data_gpt4_20231107_145030.jsonl

Exits 0 when all four figures match exactly, 1 otherwise (only totals are published, so there is
no per-row comparison).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

PUBLISHED = {"prompt_strict": 416 / 541, "instruction_strict": 697 / 834,
             "prompt_loose": 429 / 541, "instruction_loose": 712 / 834}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", required=True, type=Path, help="GPT-4 response JSONL (optionally .gz)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("POSTTRAIN_DATA", "../shared/data")))
    args = parser.parse_args()

    from posttrain.verifiers.instruct import InstructVerifier, instruction_accuracies

    opener = gzip.open if args.responses.suffix == ".gz" else open
    with opener(args.responses, "rt", encoding="utf-8") as f:
        responses = {row["prompt"]: row["response"] for row in map(json.loads, f)}
    rows = [json.loads(line) for line in (args.data / "benchmarks" / "ifeval.jsonl").read_text().splitlines()]
    missing = [row["key"] for row in rows if row["prompt"] not in responses]
    if missing:
        print(f"no response for {len(missing)} prompts (keys {missing[:5]}...)", file=sys.stderr)
        return 1
    verifier = InstructVerifier()
    figures = instruction_accuracies([verifier.verify(responses[row["prompt"]], row) for row in rows])
    ok = True
    print(f"{'figure':<20} {'ours':>8} {'published':>10}")
    for name, published in PUBLISHED.items():
        ok &= abs(figures[name] - published) < 1e-12
        print(f"{name:<20} {figures[name]:>8.4f} {published:>10.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
