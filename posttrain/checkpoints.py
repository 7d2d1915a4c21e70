"""Checkpoint folders: saving a trained model, and measuring how far training moved it."""

from __future__ import annotations

import math
from pathlib import Path


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Save a model (safetensors) and its tokenizer as a Hugging Face folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def param_delta(before: Path, after: Path) -> dict:
    """Distance between two checkpoints, streamed tensor by tensor (memory near one tensor).

    Returns ``{"l2": sqrt(sum (a-b)^2), "max_abs": max |a-b|, "changed_tensors": n, "tensors": n}``.

    Raises:
        ValueError: if the two checkpoints hold different tensor names or shapes.
    """
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(f, framework="pt") as st:
                out.update({k: f for k in st.keys()})
        return out

    ia, ib = index(before), index(after)
    if set(ia) != set(ib):
        raise ValueError(f"{before} and {after} hold different tensors: {sorted(set(ia) ^ set(ib))[:5]}")
    sq, mx, changed = 0.0, 0.0, 0
    for name in sorted(ia):
        with safe_open(ia[name], framework="pt") as fa, safe_open(ib[name], framework="pt") as fb:
            a, b = fa.get_tensor(name).double(), fb.get_tensor(name).double()
        if a.shape != b.shape:
            raise ValueError(f"tensor {name}: shape {tuple(a.shape)} in {before}, {tuple(b.shape)} in {after}")
        d = (a - b).abs()
        sq += float((d * d).sum())
        mx = max(mx, float(d.max())) if d.numel() else mx
        changed += int(bool((d > 0).any()))
    return {"l2": math.sqrt(sq), "max_abs": mx, "changed_tensors": changed, "tensors": len(ia)}
