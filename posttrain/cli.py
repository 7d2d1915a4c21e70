"""The ``posttrain`` command: ``run`` (the post-training flow), ``eval`` (the evaluation flow), ``grade``."""

from __future__ import annotations

import os

# Before torch is imported anywhere: busy-waiting OpenMP threads make torch 5-30x slower on a
# loaded 2-core machine (design.md §4).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(add_completion=False, help="posttrain: SFT -> RL -> distillation -> instruct RL -> evaluation.")
console = Console()


def _split(values: list[str] | None) -> list[str] | None:
    out = [s.strip() for v in values or [] for s in v.split(",") if s.strip()]
    return out or None


def _print_table(table: dict, title: str) -> None:
    t = Table(title=title)
    for col in ("benchmark", "problems", "k", "avg@k", "± stderr", "pass@k", "maj@k"):
        t.add_column(col)
    for name, f in table.items():
        k = f["k"]
        maj = f.get(f"maj_at_{k}")
        t.add_row(name, str(f["problems"]), str(k), f"{f[f'avg_at_{k}']:.3f}", f"{f['stderr']:.3f}",
                  f"{f[f'pass_at_{k}']:.3f}", "-" if maj is None else f"{maj:.3f}")
    console.print(t)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (bad recipe, data or checkpoint; storage or
    tracker down): printed as one line, without a traceback."""
    from posttrain.config import RecipeError
    from posttrain.data.errors import DataError
    from posttrain.modeling import ModelError
    from posttrain.storage import StorageError
    from posttrain.tracking import TrackingUnavailable

    return (RecipeError, DataError, ModelError, StorageError, TrackingUnavailable)


def _fail(error: BaseException) -> None:
    """Print ``error`` as one red line on stderr and exit 1."""
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(error))}", soft_wrap=True)
    raise typer.Exit(1) from None


@app.command()
def run(
    recipe: Path = typer.Option(Path("recipes/tiny-cpu.yaml"), "--recipe", help="recipe YAML"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override, e.g. sft_stage1.train.max_steps=20"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="run only these stages (comma-separated)"),
    from_: Optional[str] = typer.Option(None, "--from", help="start at this stage (with --model, from that checkpoint)"),
    model: Optional[str] = typer.Option(None, "--model", help="checkpoint folder the first stage starts from"),
    force: Optional[list[str]] = typer.Option(None, "--force", help="recompute these stages even if cached"),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="artifact root URI (default POSTTRAIN_ARTIFACTS)"),
) -> None:
    """Run the post-training flow on a recipe; finished stages are reused."""
    from posttrain.plan import PIPELINE

    stages = _split(only)
    if from_:
        if from_ not in PIPELINE:
            raise typer.BadParameter(f"unknown stage {from_!r}; stages are {PIPELINE}", param_hint="--from")
        stages = [s for s in PIPELINE[PIPELINE.index(from_):] if stages is None or s in stages]
    if model and not stages:
        raise typer.BadParameter("--model needs --from STAGE (or --only)", param_hint="--model")
    from posttrain.storage import ArtifactStore
    from posttrain.tracking import check_tracking_server, tracking_uri

    try:
        check_tracking_server()  # before Prefect starts: a down MLflow server fails in seconds
        # Prefect is imported only now: it configures logging on import, bound to the current streams.
        from flows.post_training import post_training

        with console.status("running the post-training flow (progress in the log and the Prefect UI)"):
            result = post_training(recipe_path=str(recipe), overrides=set_ or None, only=stages, force=_split(force),
                                   start_model=model, artifacts=artifacts)
    except _user_errors() as e:  # the message says what is wrong (file, row, field) or down
        _fail(e)
    evaluated = result["stages"].get("evaluate")
    if evaluated:
        store = ArtifactStore.from_uri(result["artifacts"])
        table = store.get_json(f"stages/evaluate/{evaluated['key']}/eval_table.json")
        _print_table(table, "Evaluation")
    t = Table(title="Stages")
    for col in ("stage", "status", "seconds", "output"):
        t.add_column(col)
    for name, r in result["stages"].items():
        t.add_row(name, "cached" if r["cached"] else "ran", f"{r['seconds']:.0f}", r["uri"])
    console.print(t)
    console.print(f"artifacts: {result['artifacts']}  (run record: {result['run']})")
    console.print(f"MLflow: {tracking_uri()}  parent run {result['mlflow_run_id']}  (mlflow ui --backend-store-uri {tracking_uri()})")


@app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", help="checkpoint folder (Hugging Face layout)"),
    benchmarks: list[str] = typer.Option(..., "--benchmarks", help="comma-separated benchmark names"),
    k: Optional[int] = typer.Option(None, "--k", help="samples per problem (default: 64 math, 16 IMO-AnswerBench "
                                    "and GPQA, 8 code, 4 otherwise)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="problems per benchmark"),
    engine: str = typer.Option("vllm", "--engine", help="vllm (faster at every load measured) or hf"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    after: Optional[str] = typer.Option(None, "--after", help="time split: only problems dated after this ISO date"),
    shards: int = typer.Option(1, "--shards", min=1, help="task runs per benchmark (a failed one is retried alone)"),
    clr: Optional[list[str]] = typer.Option(None, "--clr", help="benchmarks to run CLR test-time scaling on"),
    clr_k: int = typer.Option(32, "--clr-k", help="CLR: trajectories per vote (K; 3B: 32)"),
    clr_claims: int = typer.Option(5, "--clr-claims", help="CLR: claims per trajectory (M; 3B: 5)"),
    clr_repeats: int = typer.Option(8, "--clr-repeats", help="CLR: votes per problem (R; 3B: 8)"),
) -> None:
    """Evaluate any checkpoint: avg@k, pass@k, maj@k per benchmark; optionally CLR."""
    from posttrain.data import check_benchmark
    from posttrain.modeling import check_checkpoint

    try:  # names and the checkpoint first: seconds, before Prefect, MLflow and the model start
        for name in _split(benchmarks) + (_split(clr) or []):
            check_benchmark(name)
        if not model.startswith("s3://"):
            check_checkpoint(model)
    except (ValueError, *_user_errors()) as e:
        _fail(e)
    from flows.evaluate import evaluate
    from posttrain.config import ClrSpec, SamplingSpec

    spec = ClrSpec(k=clr_k, claims=clr_claims, repeats=clr_repeats)
    with console.status("evaluating"):
        result = evaluate(model, _split(benchmarks), k, limit, SamplingSpec(engine=engine, max_new_tokens=max_new_tokens),
                          clr_benchmarks=_split(clr), clr=spec, after=after, shards=shards)
    _print_table(result["table"], f"Evaluation of {model}")
    if result["clr"]:
        t = Table(title=f"CLR (K={spec.k}, M={spec.claims}, R={spec.repeats}, {spec.prompt_version})")
        for col in ("benchmark", "problems", "pass@1", "majority pass@1", "CLR pass@1", "claims/trajectory"):
            t.add_column(col)
        for name, f in result["clr"].items():
            t.add_row(name, str(f["problems"]), f"{f['pass_at_1']:.3f}", f"{f['majority_pass_at_1']:.3f}",
                      f"{f['clr_pass_at_1']:.3f}", f"{f['claims_per_trajectory']:.2f}")
        console.print(t)


@app.command()
def grade(
    verifier: str = typer.Option(..., "--verifier", help="math, code, instruct or choice"),
    input: Path = typer.Option(..., "--input", help="JSONL: completion + the verifier's reference fields"),
    output: Path = typer.Option(..., "--output", help="JSONL: each input line plus score, passed, details"),
    workers: int = typer.Option(2, "--workers"),
) -> None:
    """Grade a file of completions offline with one verifier (design.md §3)."""
    from posttrain.grade import grade_file

    summary = grade_file(verifier, input, output, workers=workers)
    console.print(json.dumps(summary))


def main() -> None:
    import logging

    # the library's progress lines (stage starts, record counts, benchmark figures) on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"))
    lib = logging.getLogger("posttrain")
    lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    app()


if __name__ == "__main__":
    main()
