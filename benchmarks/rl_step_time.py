"""RL step time: MGPO vs plain TRL GRPO on the same config, and where the step time goes.

Not a test: run it by hand on an idle machine, e.g.

    .venv/bin/python benchmarks/rl_step_time.py --recipe recipes/tiny-cpu.yaml --phase rl_math --steps 4

``--model smollm2`` (default) converts the shipped GGUF once into ./.cache/bench-smollm2; any
model folder works. Trains ``--steps`` steps with ``trl.GRPOTrainer`` and with
``posttrain.rl.trainer.MGPOTrainer`` (lambda from the phase, 1 if it is 0), alternating for
``--repeats`` rounds on the same seed, and prints per trainer the mean step time (TRL's
``step_time``, first step of each run dropped as warm-up), the MGPO/GRPO ratio (goal <= 1.05),
and for MGPO the rollout share of the step (generation and scoring) and rollout tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _model(name: str) -> Path:
    if name != "smollm2":
        return Path(name)
    from posttrain.config import ModelSpec
    from posttrain.modeling import prepare_model

    folder = Path(".cache/bench-smollm2")
    if not (folder / "config.json").is_file():
        prepare_model(ModelSpec(source="smollm2"), folder)
    return folder


def _run(trainer_cls, model_dir: Path, records, cfg, steps: int, **extra) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.rewards import verifier_reward
    from posttrain.rl.stage import rl_rows
    from posttrain.trl_args import grpo_config

    train = cfg.train.model_copy(update={"max_steps": steps})
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = grpo_config(cfg, Path(out), seed=0, use_vllm=False, train=train)
        trainer = trainer_cls(model=model, reward_funcs=[verifier_reward], args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list(rl_rows(records)), **extra)
        trainer.train()
    return [h for h in trainer.state.log_history if "step_time" in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    ap.add_argument("--phase", default="rl_math")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=None, help="override the phase's rollout length")
    ap.add_argument("--prompts", type=int, default=None, help="use only the first N prompts of the phase's data")
    args = ap.parse_args()

    from trl import GRPOTrainer

    from posttrain.config import load_recipe
    from posttrain.data import load_mixture
    from posttrain.rl.stage import drop_long_prompts
    from posttrain.rl.trainer import MGPOTrainer

    recipe = load_recipe(args.recipe)
    cfg = getattr(recipe, args.phase)
    if args.max_completion_length:
        cfg = cfg.model_copy(update={"max_completion_length": args.max_completion_length})
    model_dir = _model(args.model)
    records = load_mixture(cfg.data, recipe.data_root, seed=recipe.seed)
    records = drop_long_prompts(records, model_dir, cfg.max_prompt_length)[0][: args.prompts]
    lam = cfg.mgpo_lambda or 1.0
    times: dict[str, list[float]] = {"grpo": [], "mgpo": []}
    rollout_share, tokens_per_s = [], []
    for _ in range(args.repeats):
        for name, cls, extra in (("grpo", GRPOTrainer, {}), ("mgpo", MGPOTrainer, {"mgpo_lambda": lam})):
            history = _run(cls, model_dir, records, cfg, args.steps, **extra)[1:]
            times[name] += [h["step_time"] for h in history]
            if name == "mgpo":
                rollout_share += [h["rollout/seconds"] / h["step_time"] for h in history]
                tokens_per_s += [h["rollout/tokens_per_second"] for h in history]
    grpo, mgpo = statistics.mean(times["grpo"]), statistics.mean(times["mgpo"])
    print(f"{args.phase} of {args.recipe}: {len(records)} prompts, group size {cfg.group_size}, "
          f"batch {cfg.train.per_device_batch_size} completions, max {cfg.max_completion_length} tokens")
    print(f"{'trainer':<8} {'steps':>5} {'mean step s':>12} {'stdev':>7}")
    for name, values in times.items():
        print(f"{name:<8} {len(values):>5} {statistics.mean(values):>12.2f} {statistics.pstdev(values):>7.2f}")
    print(f"MGPO / GRPO step time: {mgpo / grpo:.3f} (goal <= 1.05)")
    print(f"MGPO rollout share of the step: {statistics.mean(rollout_share):.1%}; "
          f"rollout tokens/s: {statistics.mean(tokens_per_s):.1f}")


if __name__ == "__main__":
    main()
