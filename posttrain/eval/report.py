"""Evaluation reports: table rows beside the VibeThinker-3B reference scores, and PNG plots
(pass@k curves, completion-length histograms) for MLflow (design.md §1.5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

# VibeThinker-3B avg pass@1 in %, and with CLR where the report gives it (design.md §1.5).
REFERENCE_3B: dict[str, tuple[float, float | None]] = {
    "aime2025": (91.4, 96.7), "aime2026": (94.3, 97.1), "hmmt_feb_2025": (89.3, 95.4),
    "imo_answerbench": (76.4, 80.6), "livecodebench_v6": (80.2, None), "gpqa_diamond": (70.2, 72.9),
    "ifeval": (93.4, None), "ifbench": (74.5, None),
}


def table_rows(table: Mapping[str, Mapping]) -> list[dict]:
    """One row per benchmark for a Prefect table: avg@k ± stderr, pass@k, maj@k (rounded to 4
    places), and the VibeThinker-3B reference pass@1 (%) with and without CLR where published.
    A row named ``<benchmark> (<stage>)`` takes its benchmark's reference."""
    rows = []
    for name, f in table.items():
        k = f["k"]
        ref = REFERENCE_3B.get(name.split(" (")[0])
        rows.append({"benchmark": name, "problems": f["problems"], "k": k,
                     "avg@k": round(f[f"avg_at_{k}"], 4), "stderr": round(f["stderr"], 4),
                     "pass@k": round(f[f"pass_at_{k}"], 4),
                     "maj@k": round(f[f"maj_at_{k}"], 4) if f.get(f"maj_at_{k}") is not None else None,
                     "vibethinker_3b_pass@1_%": ref[0] if ref else None,
                     "vibethinker_3b_clr_%": ref[1] if ref else None})
    return rows


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def pass_at_k_png(table: Mapping[str, Mapping], path: Path) -> Path:
    """Unbiased pass@j against j (log2 axis) for every benchmark of ``table``. Returns ``path``."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for name, f in table.items():
        ks = sorted(int(key.removeprefix("pass_at_")) for key in f if key.startswith("pass_at_"))
        ax.plot(ks, [f[f"pass_at_{j}"] for j in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title("pass@k per benchmark", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def length_histogram_png(samples_dir: Path, path: Path) -> Path:
    """Histogram of completion lengths (tokens) per benchmark from ``samples/<name>.jsonl``."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for file in sorted(Path(samples_dir).glob("*.jsonl")):
        tokens = [json.loads(line)["tokens"] for line in file.read_text().splitlines() if line.strip()]
        if tokens:
            ax.hist(tokens, bins=20, alpha=0.5, label=file.stem)
    ax.set_xlabel("completion length (tokens)")
    ax.set_ylabel("samples")
    ax.set_title("completion lengths", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
