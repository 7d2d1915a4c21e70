"""What a stage function receives: its inputs as local folders, an output folder, and a tracker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from posttrain.config import Recipe

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """Everything a stage needs besides its own config.

    ``inputs`` maps names (``model``, ``rl_math``...) to local folders of upstream outputs;
    files the stage writes under ``out_dir`` are published when it returns; ``tracker`` is the
    stage's MLflow child run (None when tracking is off); ``checkpoints`` mirrors trainer
    checkpoints to the artifact store so a retried stage resumes (None: no mirroring).
    """

    stage: str
    recipe: Recipe
    out_dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    tracker: Any = None
    data_root: str | None = None
    checkpoints: Any = None  # posttrain.checkpoints.RemoteCheckpoints: resume points in the store
    exclude_ids: frozenset[str] = frozenset()  # training records that overlap a benchmark (decontamination)
    progress: Callable[[float], None] | None = None  # told the fraction of training steps done (0..1)

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def model_in(self) -> Path:
        """The upstream model folder (``inputs["model"]``)."""
        return self.inputs["model"]

    @property
    def model_out(self) -> Path:
        """Where a stage writes the model it produces."""
        return self.out_dir / "model"

    def load(self, specs) -> list:
        """The stage's training records: ``load_mixture(specs)`` without the decontaminated ids."""
        from posttrain.data import load_mixture

        records = load_mixture(specs, self.data_root, seed=self.seed)
        if self.exclude_ids:
            kept = [r for r in records if r.id not in self.exclude_ids]
            if len(kept) < len(records):
                log.info("%s: %d records dropped by decontamination", self.stage, len(records) - len(kept))
            records = kept
        return records

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)

    def callbacks(self) -> list:
        """Trainer callbacks that stream per-step metrics to MLflow and report progress."""
        from posttrain.tracking import progress_callback, trainer_callback

        callbacks = [trainer_callback(self.tracker, self.stage)] if self.tracker is not None else []
        if self.progress is not None:
            callbacks.append(progress_callback(self.progress))
        return callbacks
