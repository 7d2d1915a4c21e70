"""Stage definitions, content keys and the one function that runs (or reuses) a stage (design.md §2).

The stage *order* lives in ``flows/post_training.py``; this module says what each stage does,
how its key is computed, and how its output is published.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from posttrain.checkpoints import RemoteCheckpoints
from posttrain.config import Recipe, config_hash
from posttrain.context import StageContext
from posttrain.storage import ArtifactStore, local_cache_dir

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]


class StageRecord(BaseModel):
    """What a stage hands to the next: a reference to its output, never the output itself."""

    stage: str
    key: str
    uri: str
    config_hash: str
    content_hash: str
    mlflow_run_id: str | None = None
    cached: bool = False
    seconds: float = 0.0
    summary: dict[str, Any] = {}


@dataclass(frozen=True)
class StageDef:
    """``run(ctx, recipe) -> summary``; ``config(recipe)`` is what the key hashes.

    ``inputs(recipe)`` names earlier stages whose models the stage reads besides its upstream
    (distillation's RL specialists); they are fetched into ``ctx.inputs[<stage>]``. Their keys
    are already part of this stage's key through the upstream chain.
    """

    run: Callable[[StageContext, Recipe], dict]
    config: Callable[[Recipe], Any]
    needs_model: bool = True
    inputs: Callable[[Recipe], list[str]] = lambda recipe: []


def _prepare(ctx: StageContext, recipe: Recipe) -> dict:
    from posttrain.modeling import prepare_model

    texts = None
    if recipe.model.source == "tiny":
        from posttrain.data import load_mixture
        from posttrain.config import DataSpec

        records = load_mixture([DataSpec(source=s, limit=500) for s in recipe.model.tiny.tokenizer_sources],
                               ctx.data_root, seed=ctx.seed)
        texts = [r.prompt + "\n" + (r.reference.solution or "") for r in records]
    return prepare_model(recipe.model, ctx.model_out, texts)


def _sft(name: str) -> StageDef:
    from posttrain.sft import run_sft_stage

    return StageDef(lambda ctx, r: run_sft_stage(ctx, getattr(r, name)), lambda r: getattr(r, name))


def _rl(name: str) -> StageDef:
    from posttrain.rl import run_rl_stage

    return StageDef(lambda ctx, r: run_rl_stage(ctx, getattr(r, name)), lambda r: getattr(r, name))


def _instruct_rl(ctx: StageContext, recipe: Recipe) -> dict:
    """Instruct RL (3B §2.4): training prompts with constraints attached, checked against the
    IFEval/IFBench prompts (refused on any 10-gram overlap), then the shared RL machinery."""
    from posttrain.constraints import attach_constraints, check_decontaminated
    from posttrain.rl import run_rl_stage

    cfg = recipe.instruct_rl
    base = ctx.load(cfg.prompts.sources)
    records = attach_constraints(base, cfg.prompts.constraints_per_prompt, ctx.seed, cfg.prompts.kinds)
    decontamination = check_decontaminated(records, ctx.data_root)
    (ctx.out_dir / "instruct_prompts.jsonl").write_text("".join(
        json.dumps({"id": r.id, "prompt": r.prompt, "constraints": r.meta["constraints"]}) + "\n" for r in records))
    records += ctx.load(cfg.data) if cfg.data else []
    summary = run_rl_stage(ctx, cfg, records)
    summary.update(decontamination_checked=decontamination["checked"], reward_mode=cfg.reward,
                   judge=cfg.judge.model if cfg.judge else "off")
    return summary


def _distill(ctx: StageContext, recipe: Recipe) -> dict:
    from posttrain.distill import run_distill_stage

    return run_distill_stage(ctx, recipe.distill)


def _evaluate(ctx: StageContext, recipe: Recipe) -> dict:
    from posttrain.eval.run import evaluate_model, format_table

    cfg = recipe.evaluate
    table = evaluate_model(ctx.model_in, cfg, ctx.data_root, ctx.out_dir, ctx.seed, ctx.log_metrics)
    for stage, names in cfg.baselines.items():  # the same benchmarks on an earlier stage's model
        sub = cfg.model_copy(update={"benchmarks": [b for b in cfg.benchmarks if b.name in names], "baselines": {}})
        (ctx.out_dir / "baselines" / stage).mkdir(parents=True, exist_ok=True)
        log_metrics = (lambda m, s=stage: ctx.log_metrics({k.replace("eval/", f"eval/{s}/", 1): v for k, v in m.items()}))
        figures = evaluate_model(ctx.inputs[stage], sub, ctx.data_root, ctx.out_dir / "baselines" / stage, ctx.seed,
                                 log_metrics)
        table.update({f"{name} ({stage})": row for name, row in figures.items()})
    if cfg.baselines:
        (ctx.out_dir / "eval_table.json").write_text(json.dumps(table, indent=2))
        (ctx.out_dir / "eval_table.md").write_text(format_table(table))
    return {"table": table}


STAGES: dict[str, StageDef] = {
    "prepare_model": StageDef(_prepare, lambda r: r.model, needs_model=False),
    "sft_stage1": _sft("sft_stage1"),
    "sft_stage2": _sft("sft_stage2"),
    "rl_math": _rl("rl_math"),
    "rl_code": _rl("rl_code"),
    "rl_stem": _rl("rl_stem"),
    "distill": StageDef(_distill, lambda r: r.distill, inputs=lambda r: sorted(set(r.distill.specialists.values()))),
    "instruct_rl": StageDef(_instruct_rl, lambda r: r.instruct_rl),
    "evaluate": StageDef(_evaluate, lambda r: r.evaluate, inputs=lambda r: sorted(r.evaluate.baselines)),
}


# Stages that read training data (and so drop what decontamination finds).
TRAINING_STAGES = ("sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill", "instruct_rl")


def excluded_ids(recipe: Recipe, data_root: str | None, store: ArtifactStore) -> frozenset[str]:
    """Training record ids that decontamination drops (none when its action is ``skip``)."""
    if recipe.decontamination.action == "skip":
        return frozenset()
    from posttrain.eval.decontam import check_recipe

    report = check_recipe(recipe, data_root, store)
    return frozenset(i for ids in report["dropped"].values() for i in ids)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


def code_version() -> str:
    """The library's code version: git tree hashes of ``posttrain/`` and ``pyproject.toml`` plus a
    hash of their uncommitted changes; the package version outside a git checkout.

    Edits to docs, tests or flows do not change it, so they do not invalidate cached stages.
    ``POSTTRAIN_CODE_VERSION`` overrides it (an image built without ``.git`` sets it at build time).
    """
    import os

    if os.environ.get("POSTTRAIN_CODE_VERSION"):
        return os.environ["POSTTRAIN_CODE_VERSION"]
    try:
        trees = _git("rev-parse", "HEAD:posttrain", "HEAD:pyproject.toml").split()
        dirty = _git("diff", "HEAD", "--", "posttrain", "pyproject.toml")
        untracked = _git("ls-files", "--others", "--exclude-standard", "--", "posttrain")
        for rel in untracked.split():
            dirty += rel + (REPO_ROOT / rel).read_text(errors="replace")
    except (OSError, subprocess.CalledProcessError):
        from posttrain import __version__

        return f"package-{__version__}"
    suffix = f"+{hashlib.sha256(dirty.encode()).hexdigest()[:12]}" if dirty else ""
    return "-".join(t[:12] for t in trees) + suffix


def stage_key(stage: str, recipe: Recipe, upstream_key: str | None, version: str, data: str | None = None) -> str:
    """sha256 of (stage, its resolved config, the recipe seed and data root, the upstream key, code
    version, and ``data``: the content hash of the stage's data sources, ``snapshot.stage_data_hashes``)."""
    cfg = STAGES[stage].config(recipe)
    payload = {"stage": stage, "config": cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg,
               "seed": recipe.seed, "data_root": recipe.data_root, "upstream": upstream_key, "code": version}
    if stage in TRAINING_STAGES:  # what decontamination drops is part of a training stage's data
        payload["decontamination"] = recipe.decontamination.model_dump(mode="json")
        if recipe.launch.num_processes > 1:  # the global batch depends on the number of processes
            payload["processes"] = recipe.launch.num_processes
    if data is not None:
        payload["data"] = data
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached_record(store: ArtifactStore, stage: str, key: str) -> StageRecord | None:
    """The record of a published output with this key, or None."""
    manifest = store.stage_manifest(stage, key)
    if manifest is None:
        return None
    return StageRecord(stage=stage, key=key, uri=store.uri(store.stage_prefix(stage, key)),
                       config_hash=manifest.get("config_hash", ""), content_hash=manifest["content_hash"],
                       mlflow_run_id=manifest.get("mlflow_run_id"), cached=True, summary=manifest.get("summary", {}))


def run_stage(stage: str, recipe: Recipe, key: str, upstream: StageRecord | None, store: ArtifactStore,
              parent_tracker=None, force: bool = False, data_root: str | None = None,
              input_keys: dict[str, str] | None = None, progress: Callable[[float], None] | None = None) -> StageRecord:
    """Run ``stage`` unless its output with ``key`` is already published; return its record.

    ``input_keys`` maps the extra input stages of ``STAGES[stage].inputs`` to their keys;
    ``progress`` is told the fraction of training steps done (0..1) while the stage trains.

    Two runs that reach the same key never both compute it (design.md §2): a file lock in the
    local cache serialises the runs of this machine, and the store's lease (``lease.json`` with
    conditional writes on S3, an ``fcntl`` lock under a local root) those of machines sharing the
    artifact root. The second run waits and then reuses the first's output, or takes the stage
    over if the first failed or died. With ``force`` the stage is recomputed and republished
    under the same key (after any run computing it now).
    """
    lock_path = local_cache_dir() / "locks" / f"{stage}-{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (hit := cached_record(store, stage, key)):
            return hit
        with store.lease(stage, key) as lease:
            if not lease.acquire(lambda: not force and store.stage_manifest(stage, key) is not None):
                log.info("%s: published by another run while this one waited (key %s); reusing it", stage, key)
                return cached_record(store, stage, key)
            return _compute(stage, recipe, key, upstream, store, parent_tracker, data_root, force, input_keys or {},
                            progress, lease)


def _fetch_inputs(stage: str, recipe: Recipe, upstream: StageRecord | None, store: ArtifactStore,
                  input_keys: dict[str, str]) -> dict[str, Path]:
    """Local model folders of the upstream stage and of the stage's extra inputs.

    Raises:
        RuntimeError: naming an extra input stage whose output is not in the store.
    """
    definition = STAGES[stage]
    inputs = {}
    if definition.needs_model:
        inputs["model"] = store.fetch_stage(upstream.stage, upstream.key) / "model"
    for name in definition.inputs(recipe):
        key = input_keys.get(name)
        if key is None or store.stage_manifest(name, key) is None:
            raise RuntimeError(f"{stage} reads {name}'s model, but {name}'s output (key {key}) is not in "
                               f"{store.uri('stages')}: run the pipeline through {name} first")
        inputs[name] = store.fetch_stage(name, key) / "model"
    return inputs


def _compute(stage, recipe, key, upstream, store, parent_tracker, data_root, force=False,
             input_keys=None, progress=None, lease=None) -> StageRecord:
    definition = STAGES[stage]
    work = local_cache_dir() / "work" / stage / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    inputs = _fetch_inputs(stage, recipe, upstream, store, input_keys or {})
    exclude = excluded_ids(recipe, data_root, store) if stage in TRAINING_STAGES else frozenset()
    tracker = parent_tracker.child(stage, {"stage_key": key}) if parent_tracker else None
    try:
        record = _run_and_publish(stage, definition, recipe, key, upstream, store, tracker, work, data_root, force,
                                  inputs, exclude, progress, lease)
    except BaseException:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.end("FINISHED")  # after what it spooled, if the server was down meanwhile
    return record


def _run_and_publish(stage, definition, recipe, key, upstream, store, tracker, work, data_root, force, inputs,
                     exclude, progress, lease) -> StageRecord:
    """The stage's computation, then its publication under ``key`` (``_compute`` owns the tracker)."""
    from posttrain.engines import vllm_defaults
    from posttrain.tracking import flatten

    cfg = definition.config(recipe)
    cfg_json = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    if tracker:
        tracker.log_params(flatten("", {"stage": stage, "key": key, "upstream": upstream.key if upstream else "",
                                        "config": cfg_json}))
    checkpoints = RemoteCheckpoints(store, store.stage_prefix(stage, key))
    if force:  # recompute from scratch, not from an earlier attempt's checkpoints
        checkpoints.clear()
    ctx = StageContext(stage=stage, recipe=recipe, out_dir=work, inputs=inputs, tracker=tracker,
                       data_root=data_root, checkpoints=checkpoints, exclude_ids=exclude, progress=progress)
    start = time.monotonic()
    log.info("%s: running (key %s)", stage, key)
    with vllm_defaults(tensor_parallel_size=recipe.launch.tensor_parallel_size):
        summary = definition.run(ctx, recipe)
    seconds = time.monotonic() - start
    numeric = {f"stage/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run_id = None
    if tracker:
        tracker.log_metrics({**numeric, "stage/seconds": seconds})
        if not tracker.flush() and tracker.pending:  # created while the server was down, and it still is
            log.warning("%s: its MLflow run is not created yet (server %s down), so the manifest names none; the "
                        "run is created with its metrics when the server answers", stage, tracker.uri)
        run_id = None if tracker.pending else tracker.run_id
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if lease is not None:
        lease.check()  # still ours: no other run took the key over while this one computed
    # --force republishes under the same key: withdraw the old manifest first, so no reader ever
    # pairs it with the new files.
    store.delete(f"{store.stage_prefix(stage, key)}/manifest.json")
    manifest = store.publish_stage(stage, key, work, extra={
        "summary": json.loads(json.dumps(summary, default=str)), "config_hash": config_hash(cfg_json),
        "upstream": upstream.key if upstream else None, "mlflow_run_id": run_id, "seconds": seconds})
    if tracker:
        for name in ("summary.json", "eval_table.md", "eval_table.json", "distill_report.json",
                     "filter_report.json", "rollout_samples.json", "probe_report.json", "probe_heatmap.png",
                     "sft_data_report.json", "hard_subset_report.json", "sft_data/manifest.json", "pass_at_k.png",
                     "lengths.png"):
            if (work / name).is_file():
                tracker.log_artifact(work / name, str(Path(name).parent) if "/" in name else None)
    checkpoints.clear()  # the output is published: its resume points are no longer needed
    shutil.rmtree(work, ignore_errors=True)
    return StageRecord(stage=stage, key=key, uri=store.uri(store.stage_prefix(stage, key)),
                       config_hash=manifest["config_hash"], content_hash=manifest["content_hash"],
                       mlflow_run_id=manifest["mlflow_run_id"], seconds=seconds, summary=manifest["summary"])
