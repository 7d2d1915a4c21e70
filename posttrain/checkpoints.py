"""Checkpoint folders: saving a trained model, and measuring how far training moved it."""

from __future__ import annotations

import json
import math
from pathlib import Path


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Save a model (safetensors) and its tokenizer as a Hugging Face folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)



def train_from(trainer, checkpoint: Path | None):
    """``trainer.train(resume_from_checkpoint=checkpoint)``; returns its ``TrainOutput``.

    From a checkpoint of the run's last step (a crash after training, before the stage published
    its output) only the weights and trainer state are loaded: ``transformers`` checks
    ``max_steps`` after a step, never before the first, so resuming would train one step too many.
    (Not under DeepSpeed or FSDP, whose checkpoints load into the prepared, sharded model.)
    """
    if checkpoint is not None and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        if 0 < state["max_steps"] <= state["global_step"]:
            from transformers.trainer_callback import TrainerState
            from transformers.trainer_utils import TrainOutput

            trainer._load_from_checkpoint(str(checkpoint))  # what train() loads: full weights or adapters
            trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else math.nan, {})
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

def param_delta(before: Path, after: Path) -> dict:
    """Distance between two checkpoints, streamed tensor by tensor (memory near one tensor).

    Returns ``{"l2": sqrt(sum (a-b)^2), "max_abs": max |a-b|, "changed_tensors": n, "tensors": n}``.

    Raises:
        ValueError: if the two checkpoints hold different tensor names or shapes.
        CheckpointError: (a ``ValueError``) naming a safetensors file that is corrupt or truncated.
    """
    from safetensors import safe_open

    from posttrain.safetensors_io import read_header

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            out.update({k: f for k in read_header(f)})  # checks the file before safetensors maps it
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


KEPT = "kept"  # folder of RemoteCheckpoints.keep: never pruned by a newer checkpoint


class RemoteCheckpoints:
    """Trainer checkpoints mirrored to the artifact store, so a retried or restarted stage resumes.

    Layout: ``<stage prefix>/checkpoints/<name>/...`` (a ``transformers`` checkpoint folder with
    model, optimizer, scheduler, RNG and trainer state, so the data position too), then
    ``<stage prefix>/checkpoints/latest.json`` written last, naming the newest complete one.
    ``publish_stage`` never copies this folder into the output; the stage clears it when it
    has published (design.md §2: ``checkpoints/`` lives while the stage runs).
    """

    def __init__(self, store, prefix: str):
        self.store = store
        self.prefix = f"{prefix}/checkpoints"

    def upload(self, local: Path, phase: str = "") -> None:
        """Upload one checkpoint folder, then point ``latest.json`` at it.

        ``phase`` names the sub-phase (``accuracy``, ``efficiency``) the checkpoint belongs to.
        """
        name = f"{phase}-{local.name}" if phase else local.name
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.store.put_file(path, f"{self.prefix}/{name}/{path.relative_to(local).as_posix()}")
        self.store.put_json(f"{self.prefix}/latest.json", {"name": name, "phase": phase})
        for old in self._names() - {name}:  # keep only the newest
            for rel in self.store.list(f"{self.prefix}/{old}/"):
                self.store.delete(rel)

    def latest(self, local_root: Path) -> tuple[str, Path] | None:
        """Download the newest complete checkpoint under ``local_root``: ``(phase, folder)``, or None.

        Raises:
            CheckpointError: naming the stored file when a safetensors file of the checkpoint is
                corrupt or truncated (the store is left as it is: resuming from it would fail later
                with a bare safetensors error).
        """
        from posttrain.modeling import CheckpointError
        from posttrain.safetensors_io import read_header

        marker = f"{self.prefix}/latest.json"
        if not self.store.exists(marker):
            return None
        latest = self.store.get_json(marker)
        folder = local_root / latest["name"]
        for rel in self.store.list(f"{self.prefix}/{latest['name']}/"):
            target = folder / rel.split(f"{self.prefix}/{latest['name']}/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(rel, target)
            if target.suffix == ".safetensors":
                try:
                    read_header(target)
                except CheckpointError as e:
                    raise CheckpointError(self.store.uri(rel), f"{e.problem} (resume checkpoint)") from None
        return latest.get("phase", ""), folder

    def keep(self, local: Path, kind: str) -> None:
        """Upload a folder that must outlive later checkpoints (e.g. a probing snapshot) under
        ``kept/<kind>/<folder name>/``; :meth:`upload` never prunes these."""
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.store.put_file(path, f"{self.prefix}/{KEPT}/{kind}/{local.name}/{path.relative_to(local).as_posix()}")

    def fetch_kept(self, kind: str, local_root: Path) -> list[Path]:
        """Download every folder kept with :meth:`keep` under ``kind`` into ``local_root``; their paths."""
        base = f"{self.prefix}/{KEPT}/{kind}/"
        folders = set()
        for rel in self.store.list(base):
            name, inner = rel.split(base, 1)[1].split("/", 1)
            target = local_root / name / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(rel, target)
            folders.add(local_root / name)
        return sorted(folders)

    def put_json(self, name: str, obj) -> None:
        """Keep a small JSON document beside the checkpoints (e.g. the prompt filter's decision)."""
        self.store.put_json(f"{self.prefix}/{name}", obj)

    def get_json(self, name: str):
        """A document kept with :meth:`put_json`, or None."""
        rel = f"{self.prefix}/{name}"
        return self.store.get_json(rel) if self.store.exists(rel) else None

    def clear(self) -> None:
        """Remove every mirrored checkpoint (after the stage published its output)."""
        for rel in self.store.list(f"{self.prefix}/"):
            self.store.delete(rel)

    def _names(self) -> set[str]:
        names = set()
        for rel in self.store.list(f"{self.prefix}/"):
            rest = rel.split(f"{self.prefix}/", 1)[1]
            if "/" in rest:  # folders only: latest.json and kept documents sit at the top
                names.add(rest.split("/", 1)[0])
        names.discard(KEPT)
        return names
