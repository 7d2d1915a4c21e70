"""Recipe sections for sampling and evaluation: benchmarks, CLR, decontamination.
Re-exported by :mod:`posttrain.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from posttrain.config_ops import Strict

Engine = Literal["hf", "vllm"]


class SamplingSpec(Strict):
    """Sampling settings of generation stages (design.md §1.5 defaults). vLLM is the default
    engine: faster than HF generate here at both loads measured (2.3x at 8 prompts x 4 samples,
    3.3x at 64 x 8; docs/performance.md), as on GPUs."""

    engine: Engine = "vllm"
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=32, ge=1, description="prompts per generate call (hf engine)")
    seed: int = 0


class BenchmarkSpec(Strict):
    """One benchmark run: a data source, problems kept (``limit``), samples per problem ``k``
    (None: the report's default for the benchmark, ``posttrain.eval.run.default_k``)."""

    name: str
    limit: int | None = Field(default=None, ge=1)
    k: int | None = Field(default=None, ge=1)
    after: str | None = Field(default=None, description="time split: only problems dated after this ISO date "
                              "(e.g. 2025-02-01; records carry contest_date, date or year)")


class ClrSpec(Strict):
    """CLR test-time scaling (3B §3): K trajectories, M claims each verified by the same model,
    reliability ``r = (mean verdict)^M``, a reliability-weighted vote, repeated R times.
    ``prompt_version`` names the two prompts; change it whenever you change them."""

    k: int = Field(default=32, ge=1, description="K: trajectories per vote (3B: 32)")
    claims: int = Field(default=5, ge=1, description="M: claims extracted per trajectory (3B: 5)")
    repeats: int = Field(default=8, ge=1, description="R: independent votes per problem (3B: 8)")
    claim_temperature: float = Field(default=0.0, ge=0, description="extraction and verification sampling")
    claim_max_new_tokens: int = Field(default=256, ge=1)
    prompt_version: str = "clr-v1"
    claim_prompt: str = (
        "Here is a problem and a proposed solution.\n\nProblem:\n{problem}\n\nSolution:\n{solution}\n\n"
        "List the {m} claims in the solution that decide its final answer, one per line as 'Claim 1: ...', "
        "'Claim 2: ...', and so on. Then give the solution's final answer on a last line as "
        "'Final answer: \\boxed{{...}}'.")
    verify_prompt: str = (
        "Problem:\n{problem}\n\nClaim:\n{claim}\n\nIs this claim correct? Check it carefully, then end "
        "with 'Verdict: 1' if it is correct or 'Verdict: 0' if it is not.")


class EvalStage(Strict):
    """Evaluation: avg@k and unbiased pass@k per benchmark (design.md §1.5).

    ``baselines`` maps an earlier stage to benchmarks (of ``benchmarks``) also run on that
    stage's model, as rows ``<benchmark> (<stage>)`` of the same table, e.g. ``{distill: [ifeval]}``
    shows IFEval before instruct RL beside the final model's.
    """

    benchmarks: list[BenchmarkSpec]
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    baselines: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _baselines_known(self) -> "EvalStage":
        names = {b.name for b in self.benchmarks}
        stages = ("prepare_model", "sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill", "instruct_rl")
        for stage, benchmarks in self.baselines.items():
            if stage not in stages:
                raise ValueError(f"baselines: {stage!r} is not a training stage ({', '.join(stages)})")
            if set(benchmarks) - names:
                raise ValueError(f"baselines.{stage}: {sorted(set(benchmarks) - names)} not among the benchmarks")
        return self


class DecontamSpec(Strict):
    """Training items that overlap a benchmark (design.md §1.6; ``posttrain.eval.decontam``):
    distinctive word ``ngram`` overlap of at least ``threshold``, n-grams found in
    ``template_min_docs`` or more documents ignored as template phrases. ``action``: ``drop``
    the items (reported), ``fail`` the run before any compute, or ``skip`` the check."""

    action: Literal["drop", "fail", "skip"] = "drop"
    benchmarks: list[str] | None = Field(default=None, description="None: every registered evaluation source")
    ngram: int = Field(default=10, ge=3)
    threshold: float = Field(default=0.5, gt=0, le=1)
    template_min_docs: int = Field(default=20, ge=2)
    min_ngrams: int = Field(default=3, ge=1, description="shorter benchmark items are not scored")
