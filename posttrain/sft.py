"""Supervised fine-tuning stages (3B §2.1; design.md §1.1) on TRL's SFTTrainer.

One stage function serves both SFT stages; they differ in their data selection:

1. **Traces**: the records' reference solutions, or (``teacher``) several teacher traces per
   query, verified or pseudo-labelled, deduplicated, with provenance (``posttrain.sft_data``).
2. **Hard subset** (``hard_subset``, stage 2): traces of at least ``min_trace_tokens`` tokens of
   problems a reference model gets wrong in at least ``min_error_rate`` of ``n`` rollouts.
3. **Training**: the model's chat template, loss on assistant tokens only, optional sequence
   packing and LoRA; checkpoints mirrored to the artifact store so a crashed stage resumes.
4. **Probing and fusion** (``probe``): Pass@K per subdomain of the checkpoints saved every
   ``probe.every`` steps, the best per subdomain fused into the stage's model.

The stage writes ``sft_data/traces.jsonl`` with ``sft_data/manifest.json`` (the SFT dataset),
``sft_data_report.json`` (teacher construction) and ``hard_subset_report.json`` beside the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

from posttrain.checkpoints import param_delta, save_model, train_from
from posttrain.config import LaunchSpec, LoraSpec, SFTStage, TrainSpec
from posttrain.context import StageContext
from posttrain.launch import launchable
from posttrain.sinks import Sinks, build
from posttrain.records import Record

log = logging.getLogger(__name__)

DATA_DIR = "sft_data"
CONSTRUCTION_REPORT = "sft_data_report.json"
HARD_SUBSET_REPORT = "hard_subset_report.json"


def sft_pairs(records: list[Record]) -> list[dict]:
    """Conversational prompt/completion pairs from the records that carry a reference solution."""
    return [r.sft_pair(r.reference.solution) for r in records if r.reference.solution]


@launchable
def train_sft(pairs: list[dict], model_dir: Path, out_dir: Path, train: TrainSpec, max_length: int,
              packing: bool, seed: int, callbacks: list, *, save_steps: int = 0,
              upload: Callable[[Path], None] | None = None, resume_from: Path | None = None,
              lora: LoraSpec | None = None, launch: LaunchSpec | None = None) -> dict:
    """Fine-tune the model in ``model_dir`` on ``pairs`` and save it to ``out_dir``.

    ``pairs`` are TRL conversational examples (``prompt``/``completion`` message lists): the
    model's chat template renders them and only completion tokens carry loss. ``save_steps``
    writes trainer checkpoints (each handed to ``upload``); ``resume_from`` continues from one
    (model, optimizer, scheduler, RNG and data position). With ``lora`` the adapters are merged
    into the saved model. With ``launch.num_processes > 1`` every rank of an ``accelerate
    launch`` runs this function (``posttrain.launch``): ``callbacks`` and ``upload`` must then
    be :class:`posttrain.sinks.Ref` s, and rank 0 saves the model and gives the result.

    Returns ``{"examples", "steps", "train_loss", "param_delta_l2"}``.

    Raises:
        ValueError: if ``pairs`` is empty.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from posttrain.trl_args import lora_config, sft_config

    if not pairs:
        raise ValueError("no SFT examples: every record lacked a solution or was filtered out")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "completion")} for p in pairs])
    args = sft_config(train, out_dir / "checkpoints", seed, max_length, packing, save_steps)
    callbacks = [build(c) for c in callbacks]
    if upload is not None and save_steps:
        from posttrain.rl.monitor import checkpoint_upload_callback

        callbacks.append(checkpoint_upload_callback(build(upload)))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks, peft_config=lora_config(lora))
    result = train_from(trainer, resume_from)
    summary = {"examples": len(pairs), "steps": result.global_step, "train_loss": result.training_loss}
    if trainer.accelerator.is_main_process:  # the one writer when several ranks train
        save_model(trainer.model.merge_and_unload() if lora else trainer.model, tokenizer, out_dir)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        summary["param_delta_l2"] = param_delta(model_dir, out_dir)["l2"]
    return summary


def _resolve_model(ctx: StageContext, name: str) -> Path:
    """``input`` -> the model entering the stage; anything else is a local model folder.

    Raises:
        FileNotFoundError: naming the recipe value, if the folder does not exist.
    """
    if name == "input":
        return ctx.model_in
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{ctx.stage}: model folder {name!r} does not exist")
    return path


def _teacher_traces(ctx: StageContext, cfg: SFTStage, records: list[Record]) -> tuple[list, dict]:
    """Sample, verify or pseudo-label and dedupe teacher traces (``posttrain.sft_data``)."""
    from posttrain.sft_data import build_sft_traces
    from posttrain.teacher import EngineTeacher, TeacherClient

    spec = cfg.teacher
    teachers, local = [], []
    try:
        for t in spec.teachers:
            if t.url:
                teachers.append(TeacherClient(t.url, t.model, api_key_env=t.api_key_env,
                                              max_concurrency=t.max_concurrency, n_per_request=t.n_per_request))
            else:
                name = f"{ctx.stage}-input" if t.model == "input" else Path(t.model).name
                local.append(EngineTeacher(t.engine, _resolve_model(ctx, t.model), name))
                teachers.append(local[-1])
        return build_sft_traces(records, teachers, spec.samples_per_query, max_per_query=spec.max_per_query,
                                temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                                seed=ctx.seed, min_agreement=spec.min_agreement, dedupe_jaccard=spec.dedupe_jaccard)
    finally:
        for t in local:
            t.close()


def build_stage_traces(ctx: StageContext, cfg: SFTStage, records: list[Record]) -> tuple[list, dict]:
    """The stage's traces before any hard-subset cut, and a summary of how they were made.

    Teacher traces (plus the references with ``teacher.include_reference``), or the records'
    reference solutions. An earlier attempt at this stage key (same data, same teachers) left
    them beside its checkpoints in the store; they are reused rather than sampled again.
    """
    from posttrain.sft_data import Trace, reference_traces

    remote = ctx.checkpoints
    if cfg.teacher is None:
        return reference_traces(records), {"source": "reference solutions"}
    saved = remote.get_json(CONSTRUCTION_REPORT) if remote is not None else None
    if saved is not None:
        traces, report = [Trace(**t) for t in saved["traces"]], saved["report"]
        log.info("%s: reusing an earlier attempt's %d teacher traces", ctx.stage, len(traces))
    else:
        traces, report = _teacher_traces(ctx, cfg, records)
        if remote is not None:
            remote.put_json(CONSTRUCTION_REPORT, {"traces": [t.to_json() for t in traces], "report": report})
    (ctx.out_dir / CONSTRUCTION_REPORT).write_text(json.dumps(report, indent=1))
    if cfg.teacher.include_reference:
        traces = traces + reference_traces(records)
    return traces, {"source": "teacher traces" + (" and reference solutions" if cfg.teacher.include_reference else ""),
                    **{f"teacher_{k}": v for k, v in report["totals"].items()}}


def hard_subset(ctx: StageContext, cfg: SFTStage, records: list[Record], traces: list,
                pseudo_labels: dict[str, str]) -> tuple[list, dict]:
    """Cut ``traces`` to the hard subset (3B §2.1 stage 2) and write ``hard_subset_report.json``.

    Error rates come from ``hard_subset.n`` rollouts of the reference model per problem that has
    a trace of at least ``min_trace_tokens`` tokens (skipped when ``min_error_rate`` is 0).
    Returns ``(kept traces, summary counts and a per-domain selection table)``.
    """
    from transformers import AutoTokenizer

    from posttrain.engines import SamplingParams
    from posttrain.sft_data import reference_error_rates, select_hard_subset

    spec = cfg.hard_subset
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.model_in))
    lengths: dict[str, int] = {}

    def tokens(text: str) -> int:
        if text not in lengths:
            lengths[text] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return lengths[text]

    rates: dict[str, float] = {}
    if spec.min_error_rate > 0:  # roll out only problems with a trace long enough to keep
        long_enough = {t.record_id for t in traces if tokens(t.completion) >= spec.min_trace_tokens}
        problems = [r for r in records if r.id in long_enough]
        sampling = SamplingParams(temperature=spec.temperature, top_p=spec.top_p,
                                  max_new_tokens=spec.max_new_tokens, seed=ctx.seed)
        rates = reference_error_rates(problems, _resolve_model(ctx, spec.reference_model), spec.n, spec.engine,
                                      sampling, spec.batch_size, pseudo_labels)
    kept, report = select_hard_subset(traces, rates, spec.min_trace_tokens, spec.min_error_rate, tokens)
    report["reference_model"] = spec.reference_model
    report["rollouts_per_problem"] = spec.n if spec.min_error_rate > 0 else 0
    domain = {t.trace_id: t.domain for t in traces}
    table: dict[str, dict] = {}
    for row, status in [(r, "kept") for r in report["kept"]] + [(r, "dropped") for r in report["dropped"]]:
        cell = table.setdefault(domain[row["trace_id"]], {"domain": domain[row["trace_id"]], "traces": 0, "kept": 0,
                                                          "too_short": 0, "solved_by_reference": 0, "no_rate": 0})
        cell["traces"] += 1
        cell["kept"] += status == "kept"
        for reason in row.get("reasons", []):
            key = ("too_short" if reason.startswith("trace too short") else
                   "no_rate" if reason.startswith("no reference") else "solved_by_reference")
            cell[key] += 1
    report["by_domain"] = sorted(table.values(), key=lambda c: c["domain"])
    (ctx.out_dir / HARD_SUBSET_REPORT).write_text(json.dumps(report, indent=1))
    return kept, {"hard_kept": report["kept_count"], "hard_dropped": report["dropped_count"],
                  **{f"hard_dropped_{k.replace(' ', '_')}": v for k, v in report["dropped_by_reason"].items()},
                  "selection_table": report["by_domain"]}


def write_dataset(out_dir: Path, traces: list, info: dict) -> dict:
    """Write the SFT dataset as ``sft_data/traces.jsonl`` and its ``manifest.json``.

    The manifest holds the trace count per domain and per label, the sha256 of the JSONL file,
    and ``info`` (how the traces were made and selected). Returns the manifest.
    """
    folder = out_dir / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(t.to_json(), sort_keys=True) + "\n" for t in traces]
    (folder / "traces.jsonl").write_text("".join(lines))
    manifest = {"traces": len(traces), "records": len({t.record_id for t in traces}),
                "by_domain": dict(sorted(Counter(t.domain for t in traces).items())),
                "by_label": dict(sorted(Counter(str(t.provenance.get("label")) for t in traces).items())),
                "sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), **info}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def run_sft_stage(ctx: StageContext, cfg: SFTStage) -> dict:
    """One SFT stage: data, traces, hard subset, training with resume, probing and fusion.

    With ``cfg.probe`` (diversity probing, 1.5B §3.1-3.3): probe sets per subdomain are held out
    before anything else, a checkpoint is saved every ``probe.every`` steps, each is scored
    (Pass@K per subdomain), the best per subdomain is kept and, with ``probe.fuse``, the experts
    are fused by weighted parameter averaging into the stage's model (``posttrain.merge``).
    Writes ``probe_report.json`` and ``probe_heatmap.png`` beside the model.

    Raises:
        ValueError: if no trace is left to train on (the reports written so far say why).
    """
    records = ctx.load(cfg.data)
    probes: dict = {}
    sinks = Sinks(ctx)
    callbacks = sinks.callbacks()
    remote = ctx.checkpoints
    if cfg.probe is not None and cfg.probe.every:
        from posttrain.probing import split_probe_sets

        records, probes = split_probe_sets(records, cfg.probe.key, cfg.probe.per_subdomain, ctx.seed)
        callbacks.append(sinks.probe_callback(cfg.probe.every))
    traces, info = build_stage_traces(ctx, cfg, records)
    summary: dict = {"records": len(records), "traces": len(traces), **{k: v for k, v in info.items() if k != "source"}}
    if cfg.hard_subset is not None:
        pseudo = {}
        if (ctx.out_dir / CONSTRUCTION_REPORT).is_file():
            pseudo = json.loads((ctx.out_dir / CONSTRUCTION_REPORT).read_text())["pseudo_labels"]
        traces, counts = hard_subset(ctx, cfg, records, traces, pseudo)
        summary.update(counts)
        info["hard_subset"] = cfg.hard_subset.model_dump()
    manifest = write_dataset(ctx.out_dir, traces, info)
    log.info("%s: %d traces of %d records to train on (%s)", ctx.stage, len(traces), manifest["records"],
             info["source"])
    if not traces:
        raise ValueError(f"{ctx.stage}: no trace left to train on: see {CONSTRUCTION_REPORT} / {HARD_SUBSET_REPORT}")
    resume = remote.latest(ctx.out_dir / "resume") if remote is not None else None
    if resume is not None:
        log.info("%s: resuming from checkpoint %s", ctx.stage, resume[1].name)
        if probes:
            from posttrain.probing import PROBE_DIR

            remote.fetch_kept("probe", ctx.out_dir / PROBE_DIR)
    summary.update(train_sft([t.sft_pair() for t in traces], ctx.model_in, ctx.model_out, cfg.train, cfg.max_length,
                             cfg.packing, ctx.seed, callbacks, save_steps=cfg.save_steps, upload=sinks.upload(),
                             resume_from=resume[1] if resume else None, lora=cfg.lora, launch=ctx.recipe.launch))
    summary["resumed_from_step"] = _step(resume[1]) if resume else 0
    shutil.rmtree(ctx.out_dir / "resume", ignore_errors=True)
    if probes:
        summary.update(_probe_and_fuse(ctx, cfg, probes))
    return summary


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def _probe_and_fuse(ctx: StageContext, cfg: SFTStage, probes: dict) -> dict:
    """Score the saved checkpoints, select the best per subdomain, fuse them into ``ctx.model_out``.

    LoRA probe checkpoints are adapters: each is merged into the stage's input model first.
    """
    from posttrain.merge import fuse_checkpoints, is_adapter, merge_adapter
    from posttrain.probing import PROBE_DIR, expert_weights, matrix_table, run_probing, saved_checkpoints

    checkpoints = saved_checkpoints(ctx.out_dir)
    for folder in checkpoints:
        if is_adapter(folder):
            full = folder.with_name(folder.name + ".full")
            merge_adapter(ctx.model_in, folder, full)
            shutil.rmtree(folder)
            full.rename(folder)
    log_step = (lambda m, step: ctx.log_metrics({f"train/{ctx.stage}/{k}": v for k, v in m.items()}, step))
    matrix, selection = run_probing(checkpoints, probes, cfg.probe, ctx.seed, ctx.out_dir, log_step)
    out = {"probe_subdomains": len(probes), "probe_checkpoints": len(checkpoints),
           "probe_selection": selection, "probe_table": matrix_table(matrix, selection)}
    if cfg.probe.fuse:
        weights = expert_weights(selection)
        fused = ctx.out_dir / "fused"
        report = fuse_checkpoints([ctx.out_dir / PROBE_DIR / name for name in weights], fused, list(weights.values()))
        shutil.rmtree(ctx.model_out)
        fused.rename(ctx.model_out)
        out.update(fusion_experts=len(weights), fusion_seconds=report["seconds"],
                   fusion_peak_rss_bytes=report["peak_rss_bytes"], fusion_rss_start_bytes=report["rss_start_bytes"],
                   param_delta_l2=param_delta(ctx.model_in, ctx.model_out)["l2"])
    shutil.rmtree(ctx.out_dir / PROBE_DIR, ignore_errors=True)
    return out
