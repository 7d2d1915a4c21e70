"""Diversity probing during SFT (VibeThinker 1.5B §3.1-3.3; design.md §1.1).

The "spectrum" phase optimises Pass@K, not Pass@1. Each domain is split into subdomains (MATH's
``type``: Algebra, Geometry, Precalculus, ...; code by source or difficulty), a small probe set
per subdomain is held out of training, a checkpoint is saved every ``every`` steps, and each
checkpoint's Pass@K is scored on each probe set. The argmax checkpoint per subdomain is that
subdomain's "expert"; expert fusion then averages the experts' parameters (``posttrain.merge``).

Design: checkpoints are only *saved* during training (:func:`probe_callback`), and scored after
training, one engine per checkpoint (:func:`run_probing`). Sampling inside the training loop
would need the trainer's model in memory (HF generate only), a fork of the RNG state and a pause
of the optimiser; scoring afterwards lets vLLM do the sampling and leaves the training run
bit-identical to one without probing. The cost is disk: one model folder per probe step.

Checkpoint names are ``step-<N>``; a score matrix is ``{checkpoint: {subdomain: pass@k}}`` with
checkpoints in training order (that order breaks ties in :func:`select_best`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from posttrain.records import Record

log = logging.getLogger(__name__)

PROBE_DIR = "probe-checkpoints"
_STEP = re.compile(r"step-(\d+)")
Matrix = dict[str, dict[str, float]]


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe; the proposed recipe block ``SFTStage.probe`` has the same fields.

    ``every``: save a checkpoint every N optimiser steps (0: no probing); ``key``: the subdomain
    field (a ``meta`` key, or ``"source"``), or a mapping domain -> field (e.g. ``{math: type,
    code: source}``); ``per_subdomain``: probe records per subdomain; ``k``: the K of Pass@K;
    ``samples``: completions per probe prompt, n >= k (None: k), pass@k is the unbiased estimate
    from n; ``max_new_tokens`` in tokens; ``engine``: ``vllm`` or ``hf``; ``batch_size``: prompts
    per generate call (hf engine).
    """

    every: int = 0
    key: str | Mapping[str, str] = "type"
    per_subdomain: int = 8
    k: int = 4
    samples: int | None = None
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    engine: str = "vllm"
    batch_size: int = 32


def subdomain_of(record: Record, key: str | Mapping[str, str]) -> str | None:
    """The subdomain label of ``record``, or None when it has none (it is then never probed).

    ``key`` a string: ``record.source`` if ``key == "source"``, else ``str(record.meta[key])``.
    ``key`` a mapping domain -> field: the field of the record's domain, labelled
    ``"<domain>/<value>"`` (records of unlisted domains get None).
    """
    if isinstance(key, Mapping):
        field = key.get(record.domain)
        value = None if field is None else subdomain_of(record, field)
        return None if value is None else f"{record.domain}/{value}"
    value = record.source if key == "source" else record.meta.get(key)
    return None if value is None else str(value)


def _rank(seed: int, record_id: str) -> bytes:
    # Salted with "probe" so the held-out choice does not simply repeat load_mixture's subsample order.
    return hashlib.sha256(f"probe:{seed}:{record_id}".encode()).digest()


def split_probe_sets(records: Sequence[Record], key: str | Mapping[str, str], per_subdomain: int,
                     seed: int = 0) -> tuple[list[Record], dict[str, list[Record]]]:
    """Hold out up to ``per_subdomain`` records of each subdomain as its probe set.

    Per subdomain (:func:`subdomain_of`) the records with the smallest ``sha256("probe:<seed>:<id>")``
    are held out, so the split is the same on every machine and run. At most half of a
    subdomain's records are held out (``min(per_subdomain, n // 2)``), so probing never removes a
    subdomain from training; a subdomain of one record is not probed. Records without a subdomain
    stay in training.

    Returns:
        ``(train_records, {subdomain: probe_records})``: training records in their input order
        without the held-out ones; subdomains sorted by name, probe records in input order.

    Raises:
        ValueError: if ``per_subdomain < 1``, or no subdomain can be probed (e.g. a misspelt key).
    """
    if per_subdomain < 1:
        raise ValueError(f"per_subdomain must be >= 1, got {per_subdomain}")
    groups: dict[str, list[Record]] = {}
    for record in records:
        label = subdomain_of(record, key)
        if label is not None:
            groups.setdefault(label, []).append(record)
    held: set[str] = set()
    probe_sets: dict[str, list[Record]] = {}
    for label in sorted(groups):
        members = groups[label]
        take = min(per_subdomain, len(members) // 2)
        if take == 0:
            log.warning("probing: subdomain %r has %d record(s): not probed", label, len(members))
            continue
        chosen = {r.id for r in sorted(members, key=lambda r: _rank(seed, r.id))[:take]}
        probe_sets[label] = [r for r in members if r.id in chosen]
        held |= chosen
    if not probe_sets:
        seen = sorted({k for r in records for k in r.meta})
        raise ValueError(f"probing: no subdomain to probe with key={key!r} (record meta keys seen: {seen})")
    return [r for r in records if r.id not in held], probe_sets


def score_checkpoint(model_dir: Path, probe_sets: Mapping[str, Sequence[Record]], k: int, max_new_tokens: int,
                     temperature: float = 1.0, top_p: float = 0.95, engine: str = "vllm", samples: int | None = None,
                     batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Pass@k of one checkpoint on each probe set: ``{subdomain: mean over its prompts of pass@k}``.

    Samples ``n = samples or k`` completions per probe prompt (one ``generate`` call over all
    subdomains, engine ``engine`` opened on ``model_dir`` and closed before returning), grades them
    with each record's verifier (binary ``passed``: Pass@K takes a binary reward, design.md §1.1),
    and averages the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021) per
    subdomain. Values lie in [0, 1].

    Raises:
        ValueError: if ``k < 1``, ``n < k``, or a probe set is empty; whatever the engine or a
            verifier raises.
    """
    import gc

    from posttrain.engines import SamplingParams, open_engine
    from posttrain.eval.metrics import pass_at_k
    from posttrain.verifiers.base import verify_groups

    n = samples or k
    if k < 1 or n < k:
        raise ValueError(f"probing needs 1 <= k <= samples, got k={k}, samples={n}")
    if any(len(v) == 0 for v in probe_sets.values()):
        raise ValueError(f"empty probe set among {sorted(probe_sets)}")
    labels = [label for label, recs in probe_sets.items() for _ in recs]
    records = [r for recs in probe_sets.values() for r in recs]
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    handle = open_engine(engine, model_dir, batch_size=batch_size)
    try:
        groups = handle.generate([r.chat() for r in records], params)  # [prompts][n]
    finally:
        handle.close()
        gc.collect()  # the next checkpoint's engine needs the memory (vLLM's KV cache)
    per_label: dict[str, list[float]] = {label: [] for label in probe_sets}
    for label, verdicts in zip(labels, verify_groups(records, groups), strict=True):
        per_label[label].append(pass_at_k(n, sum(bool(v.passed) for v in verdicts), k))
    return {label: sum(v) / len(v) for label, v in per_label.items()}


def select_best(matrix: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """The best checkpoint per subdomain: ``{subdomain: argmax_checkpoint matrix[checkpoint][subdomain]}``.

    ``matrix`` maps checkpoint -> subdomain -> score, checkpoints in training order. Ties go to
    the *later* checkpoint: it has seen more data (so usually a higher Pass@1 at equal Pass@K),
    and when probing cannot tell checkpoints apart (every score equal, e.g. a probe set too
    hard or too easy) the choice falls back to the last checkpoint, i.e. plain SFT. Scores within
    1e-12 count as equal. Pure: no I/O.

    Raises:
        ValueError: if ``matrix`` is empty or its checkpoints score different subdomain sets.
    """
    if not matrix:
        raise ValueError("select_best: empty score matrix")
    rows = list(matrix.items())
    subdomains = set(rows[0][1])
    for name, row in rows:
        if set(row) != subdomains:
            raise ValueError(f"select_best: checkpoint {name!r} scores {sorted(row)}, expected {sorted(subdomains)}")
    best: dict[str, str] = {}
    for sub in sorted(subdomains):
        top = max(row[sub] for _, row in rows)
        best[sub] = [name for name, row in rows if row[sub] >= top - 1e-12][-1]
    return best


def expert_weights(selection: Mapping[str, str]) -> dict[str, float]:
    """Fusion weights from a selection: each subdomain's expert gets ``1/N`` (N subdomains), summed
    when one checkpoint is best on several subdomains (1.5B §3.3 used w_i = 1/N over experts).

    Returns ``{checkpoint: weight}``, weights >= 0 summing to 1, in first-selected order.

    Raises:
        ValueError: if ``selection`` is empty.
    """
    if not selection:
        raise ValueError("expert_weights: empty selection")
    weights: dict[str, float] = {}
    for checkpoint in selection.values():
        weights[checkpoint] = weights.get(checkpoint, 0.0) + 1.0 / len(selection)
    return weights


def step_of(checkpoint: str | Path) -> int:
    """The step N of a checkpoint named ``step-N``.

    Raises:
        ValueError: for any other name.
    """
    match = _STEP.fullmatch(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"not a probe checkpoint name (step-N): {checkpoint}")
    return int(match.group(1))


def saved_checkpoints(out_dir: Path) -> list[Path]:
    """The complete probe checkpoints under ``out_dir/probe-checkpoints``, sorted by step (numerically)."""
    root = Path(out_dir) / PROBE_DIR
    found = [p for p in root.glob("step-*") if p.is_dir() and _STEP.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=step_of)


def probe_callback(out_dir: Path, every: int, tokenizer=None, on_saved: Callable[[Path], None] | None = None):
    """A ``transformers.TrainerCallback`` saving the model every ``every`` optimiser steps (and after
    the last) to ``out_dir/probe-checkpoints/step-<N>`` (safetensors + tokenizer).

    It only saves, consuming no random numbers, so the training run is unchanged by it. A folder is
    written as ``step-<N>.tmp`` and renamed when complete. Only the main process saves; the model
    must be whole on it (full fine-tuning or DDP, not ZeRO-3/FSDP-sharded); a PEFT model saves its
    adapter only (merge it into the base before scoring: ``posttrain.merge.merge_adapter``).
    ``tokenizer`` None: the trainer's ``processing_class``. ``on_saved`` gets each finished folder
    (the SFT stage keeps them in the artifact store, so a resumed run still probes them).

    Raises:
        ValueError: if ``every < 1``.
    """
    if every < 1:
        raise ValueError(f"probe every must be >= 1 step, got {every}")
    from transformers import TrainerCallback

    from posttrain.checkpoints import save_model

    root = Path(out_dir) / PROBE_DIR

    class ProbeCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            step = state.global_step
            if (step % every and step != state.max_steps) or not state.is_world_process_zero:
                return
            final, tmp = root / f"step-{step}", root / f"step-{step}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(model, tokenizer or processing_class, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if on_saved is not None:
                on_saved(final)

    return ProbeCheckpoint()


def run_probing(checkpoints: Sequence[Path], probe_sets: Mapping[str, Sequence[Record]], cfg: ProbeSettings,
                seed: int = 0, out_dir: Path | None = None,
                log_metrics: Callable[[dict, int], None] | None = None) -> tuple[Matrix, dict[str, str]]:
    """Score every checkpoint on every probe set and pick the best checkpoint per subdomain.

    ``checkpoints`` in training order (:func:`saved_checkpoints`), named uniquely (their folder
    names key the matrix); ``cfg`` any object with :class:`ProbeSettings`' fields. With
    ``log_metrics(metrics, step)`` each checkpoint's ``probe/<subdomain>/pass_at_<k>`` is logged at
    its step; with ``out_dir`` it writes ``probe_report.json`` and ``probe_heatmap.png`` there.

    Returns:
        ``(matrix, selection)``: ``{checkpoint name: {subdomain: pass@k}}`` and
        ``{subdomain: checkpoint name}`` (:func:`select_best`).

    Raises:
        ValueError: if there is no checkpoint or two share a name; whatever scoring raises.
    """
    from posttrain.tracking import metric_key

    names = [Path(c).name for c in checkpoints]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"run_probing needs checkpoints with distinct names, got {names}")
    matrix: Matrix = {}
    for index, (name, path) in enumerate(zip(names, checkpoints)):
        matrix[name] = score_checkpoint(Path(path), probe_sets, cfg.k, cfg.max_new_tokens, cfg.temperature,
                                        cfg.top_p, cfg.engine, cfg.samples, cfg.batch_size, seed)
        log.info("probing %s: %s", name, {s: round(v, 3) for s, v in matrix[name].items()})
        if log_metrics:
            step = step_of(name) if _STEP.fullmatch(name) else index
            log_metrics({metric_key("probe", s, f"pass_at_{cfg.k}"): v for s, v in matrix[name].items()}, step)
    selection = select_best(matrix)
    if out_dir is not None:
        write_report(Path(out_dir), matrix, selection, cfg.k, {s: [r.id for r in v] for s, v in probe_sets.items()})
    return matrix, selection


def matrix_table(matrix: Mapping[str, Mapping[str, float]], selection: Mapping[str, str]) -> list[dict]:
    """Rows for a table (a Prefect table artifact): one per checkpoint, ``{"checkpoint", <subdomain>: score}``
    with scores rounded to 4 places, then a row ``checkpoint="best"`` naming each subdomain's pick."""
    rows = [{"checkpoint": name, **{s: round(v, 4) for s, v in row.items()}} for name, row in matrix.items()]
    return rows + [{"checkpoint": "best", **dict(selection)}]


def write_report(out_dir: Path, matrix: Mapping[str, Mapping[str, float]], selection: Mapping[str, str], k: int,
                 probe_ids: Mapping[str, list[str]] | None = None) -> dict[str, Path]:
    """Write ``probe_report.json`` (k, matrix, selection, fusion weights, probe record ids) and
    ``probe_heatmap.png`` into ``out_dir``; returns ``{"report": path, "heatmap": path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"k": k, "matrix": matrix, "selection": selection, "weights": expert_weights(selection),
              "probe_ids": dict(probe_ids or {})}
    path = out_dir / "probe_report.json"
    path.write_text(json.dumps(report, indent=2))
    return {"report": path, "heatmap": heatmap_png(matrix, out_dir / "probe_heatmap.png", selection,
                                                   title=f"probe pass@{k}")}


def heatmap_png(matrix: Mapping[str, Mapping[str, float]], path: Path, selection: Mapping[str, str] | None = None,
                title: str = "probe pass@k") -> Path:
    """Draw the checkpoint x subdomain matrix as a PNG heat map (rows checkpoints, columns
    subdomains, colour scale 0-1, each cell annotated with its value); the cells named by
    ``selection`` (default: :func:`select_best`) are outlined. Uses matplotlib's Agg canvas (no
    pyplot, no global backend change). Returns ``path``.

    Raises:
        ValueError: as :func:`select_best` for an empty or ragged matrix.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    best = select_best(matrix)  # also validates the matrix
    selection = dict(selection) if selection is not None else best
    rows, cols = list(matrix), sorted(best)
    values = [[matrix[r][c] for c in cols] for r in rows]  # [checkpoints, subdomains]
    fig = Figure(figsize=(1.6 + 1.1 * len(cols), 1.2 + 0.45 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 else "white")
    for j, c in enumerate(cols):
        if selection.get(c) in matrix:
            i = rows.index(selection[c])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def keep_selected(checkpoints: Sequence[Path], selection: Mapping[str, str]) -> list[Path]:
    """Delete the probe checkpoints no subdomain selected (they are the bulk of a stage's disk use);
    return the kept ones, in the given order."""
    chosen = set(selection.values())
    kept = []
    for path in checkpoints:
        if Path(path).name in chosen:
            kept.append(Path(path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return kept
