"""Generation throughput of the two engines (HF generate, vLLM) on the same prompts and settings.

Not a test: run it by hand on an idle machine, e.g.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/engine_throughput.py --model smollm2 \
        --prompts 8 --samples 4 --max-new-tokens 64

``--model smollm2`` converts the shipped GGUF once into ./.cache/bench-smollm2; any model folder works.
Prints tokens/s, wall seconds and peak RSS per engine.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    from posttrain.config import ModelSpec
    from posttrain.data import load_source
    from posttrain.engines import SamplingParams, open_engine
    from posttrain.modeling import prepare_model

    model = Path(args.model)
    if args.model == "smollm2":
        model = Path(".cache/bench-smollm2")
        if not (model / "config.json").is_file():
            prepare_model(ModelSpec(source="smollm2"), model)
    records = load_source("gsm8k_test", limit=args.prompts)
    prompts = [[{"role": "user", "content": r.prompt}] for r in records]
    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens, seed=0)
    for kind in args.engines.split(","):
        engine = open_engine(kind, model, batch_size=args.prompts * args.samples)
        start = time.monotonic()
        out = engine.generate(prompts, params)
        wall = time.monotonic() - start
        tokens = sum(c.num_tokens for group in out for c in group)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{kind}: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s; peak RSS so far {peak:.0f} MiB")
        engine.close()


if __name__ == "__main__":
    main()
