"""Recipe sections for running the pipeline rather than for what it trains: process launch,
nightly promotion and retention. Re-exported by :mod:`posttrain.config`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Every recipe model refuses unknown fields, so a typo is an error naming it."""

    model_config = ConfigDict(extra="forbid")


class LaunchSpec(Strict):
    """How training stages (SFT, RL phases, distillation SFT) start their trainer, and how vLLM
    spreads a model over GPUs.

    With one process in all (``num_processes == 1``) the trainer runs inside the stage's own
    process. Above that the stage starts ``accelerate launch`` as a subprocess with
    ``config_file`` (``infra/accelerate/zero3.yaml``, ``fsdp.yaml``; None: plain DDP) and waits
    for it; every rank runs the same training function, rank 0 saves the model, logs to the
    stage's MLflow run and mirrors checkpoints to its store (``posttrain.launch``). ``cpu`` runs
    the processes on CPU with gloo, each with cores / processes OpenMP threads.
    ``tensor_parallel_size`` reaches the vLLM engines of the SFT, RL and distillation stages'
    sampling (teacher traces, hard subset, probing, prompt filter, specialists).
    """

    num_processes: int = Field(default=1, ge=1, description="processes in all (GPUs across every machine)")
    num_machines: int = Field(default=1, ge=1)
    config_file: str | None = Field(default=None, description="accelerate config file, relative to the repo root")
    cpu: bool = Field(default=False, description="processes on CPU with the gloo backend (tests, CI)")
    main_process_port: int | None = Field(default=None, ge=1, le=65535, description="None: a free port")
    tensor_parallel_size: int = Field(default=1, ge=1, description="vLLM tensor parallelism of sampling stages")


class PromotionSpec(Strict):
    """The nightly promotion gate: a candidate replaces the champion only if a paired bootstrap
    over problems shows it better on the gate benchmarks."""

    registered_model: str = Field(default="posttrain", description="MLflow registered model name")
    gate: list[str] | None = Field(default=None, description="benchmarks of the gate; None: every evaluated one")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="one-sided confidence that the mean "
                              "per-problem difference (candidate - champion) is above min_improvement")
    bootstrap_samples: int = Field(default=10_000, ge=100)
    min_improvement: float = Field(default=0.0, ge=0, description="margin in score units (0..1)")
    seed: int = 0


class RetentionSpec(Strict):
    """What the nightly cleanup keeps: the champion, the last ``keep_candidates`` candidates and
    their evaluations; older stage outputs and checkpoints go. Dry run by default."""

    keep_candidates: int = Field(default=3, ge=0)
    dry_run: bool = True
    min_age_hours: float = Field(default=24, ge=0, description="never delete what changed more recently "
                                 "(a pipeline running meanwhile may be using it)")


class NightlySpec(Strict):
    """Nightly retraining (deployment ``post-training/nightly``)."""

    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    notify_after_minutes: float = Field(default=360, gt=0, description="a run still running after this "
                                        "notifies (as a failed run does)")
