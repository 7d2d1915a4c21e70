"""A training stage's side channels in a form that crosses into ``accelerate launch`` ranks.

Trainer callbacks, checkpoint uploads and metric loggers cannot be sent to a subprocess as
objects: :class:`Ref` names a factory by import path with JSON arguments that every rank
rebuilds, and :class:`Sinks` gives a stage its side channels as objects in-process and as refs
when launched (``posttrain.launch`` explains what crosses and how).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# ---------------------------------------------------------------- portable references


@dataclass(frozen=True)
class Ref:
    """A factory call by name: ``Ref(target="pkg.mod:func", kwargs={...}).build()`` is ``func(**kwargs)``.

    The arguments must be JSON-able (or what :func:`encode` takes), so a training subprocess can
    rebuild the object from the spec file.
    """

    target: str
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def to(cls, factory: Callable, **kwargs) -> "Ref":
        return cls(f"{factory.__module__}:{factory.__qualname__}", kwargs)

    def build(self) -> Any:
        return resolve_target(self.target)(**self.kwargs)


def build(obj: Any) -> Any:
    """``obj.build()`` for a :class:`Ref`, ``obj`` itself otherwise (an in-process object)."""
    return obj.build() if isinstance(obj, Ref) else obj


def resolve_target(target: str) -> Any:
    module, _, name = target.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def mlflow_callback(run_id: str, uri: str, stage: str):
    """The stage's MLflow step callback (``posttrain.tracking.trainer_callback``), on rank 0 only."""
    from transformers import TrainerCallback

    from posttrain.tracking import Tracker, trainer_callback

    inner = trainer_callback(Tracker(run_id, uri), stage)

    class RankZeroMlflow(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                inner.on_log(args, state, control, logs=logs, **kwargs)

    return RankZeroMlflow()


def metrics_logger(run_id: str | None, uri: str | None, prefix: str) -> Callable[[dict, int], None]:
    """``log(metrics, step)`` into run ``run_id`` as ``<prefix><name>`` from rank 0 (no run: nothing)."""
    tracker = None
    if run_id is not None and process_rank() == 0:
        from posttrain.tracking import Tracker

        tracker = Tracker(run_id, uri)

    def log_metrics(metrics: dict, step: int | None = None) -> None:
        if tracker is not None:
            tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step)

    return log_metrics


def _remote(store: str, prefix: str):
    from posttrain.checkpoints import RemoteCheckpoints
    from posttrain.storage import ArtifactStore

    return RemoteCheckpoints(ArtifactStore.from_uri(store), prefix)


def checkpoint_uploader(store: str, prefix: str) -> Callable[..., None]:
    """``upload(folder, phase="")`` into ``RemoteCheckpoints(store at URI store, prefix)``.

    Called on every rank (the trainer's ``on_save``): the ranks meet at a barrier first, since
    each writes its own ``rng_state_<rank>.pth`` into the folder and rank 0 must not upload
    before they have; then rank 0 uploads.
    """
    remote = _remote(store, prefix)

    def upload(folder: Path, phase: str = "") -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if process_rank() == 0:
            remote.upload(Path(folder), phase)

    return upload


def probe_callback(out_dir: str, every: int, store: str | None = None, prefix: str | None = None):
    """``posttrain.probing.probe_callback`` keeping each snapshot in the store (rank 0 saves)."""
    from posttrain.probing import probe_callback as probe

    keep = None
    if store is not None:
        remote = _remote(store, prefix)
        keep = lambda folder: remote.keep(folder, "probe")  # noqa: E731
    return probe(Path(out_dir), every, on_saved=keep)


PROGRESS_MARK = "[posttrain.launch progress]"
_PROGRESS: dict[str, Callable[[float], None]] = {}  # token -> the stage's progress report, in the parent


def progress_relay(token: str):
    """A progress callback (``posttrain.tracking.progress_callback``) whose reports rank 0 prints to
    stderr as marked lines; :func:`run_launched` hands them to the report registered under ``token``."""
    from posttrain.tracking import progress_callback

    def report(fraction: float) -> None:
        if process_rank() == 0:
            print(f"{PROGRESS_MARK} {token} {fraction:.6f}", file=sys.stderr, flush=True)

    return progress_callback(report)


def relay_progress(line: str) -> None:
    try:
        token, fraction = line.removeprefix(PROGRESS_MARK).split()
        value = float(fraction)
    except ValueError:  # a garbled line: progress is advisory
        return
    report = _PROGRESS.get(token)
    if report is not None:
        report(value)
        if value >= 1.0:
            _PROGRESS.pop(token, None)


def param_digest_callback(folder: str):
    """A debugging callback: at the end of training each rank writes ``rank-<i>.json`` to
    ``folder`` with the sha256 of its model's state dict (names and bytes, sorted by name), so
    a test can check that every rank holds the same parameters."""
    import hashlib

    from transformers import TrainerCallback

    class ParamDigest(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            h = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            Path(folder).mkdir(parents=True, exist_ok=True)
            out = {"rank": args.process_index, "world_size": args.world_size, "sha256": h.hexdigest()}
            (Path(folder) / f"rank-{args.process_index}.json").write_text(json.dumps(out))

    return ParamDigest()


class Sinks:
    """Where a stage's trainer reports: MLflow step metrics and the checkpoint mirror.

    In-process (``ctx.recipe.launch.num_processes == 1``) these are the stage's own objects
    (``ctx.callbacks()``, ``ctx.checkpoints.upload``, ``ctx.log_metrics``); launched, they are
    :class:`Ref` s built from the tracker's run id and URI and the store's URI and prefix.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.portable = ctx.recipe.launch.num_processes > 1
        tracker, remote = ctx.tracker, ctx.checkpoints
        self._run = self._store = None
        if self.portable and tracker is not None:
            self._run = {"run_id": tracker.run_id, "uri": tracker.uri}
        if self.portable and remote is not None:
            self._store = {"store": remote.store.root, "prefix": remote.prefix.removesuffix("/checkpoints")}

    def callbacks(self) -> list:
        """Trainer callbacks streaming per-step metrics to the stage's MLflow run (and progress
        to ``ctx.progress``, relayed through the children's stderr when launched)."""
        if not self.portable:
            return self.ctx.callbacks()
        refs = [Ref.to(mlflow_callback, **self._run, stage=self.ctx.stage)] if self._run else []
        progress = getattr(self.ctx, "progress", None)
        if progress is not None:
            token = uuid.uuid4().hex
            _PROGRESS[token] = progress
            refs.append(Ref.to(progress_relay, token=token))
        return refs

    def upload(self):
        """``upload(folder, phase="")`` mirroring a trainer checkpoint, or None without a mirror."""
        if self.ctx.checkpoints is None:
            return None
        return Ref.to(checkpoint_uploader, **self._store) if self.portable else self.ctx.checkpoints.upload

    def log_metrics(self):
        """``log(metrics, step)`` into the stage's run as ``train/<stage>/<name>``."""
        prefix = f"train/{self.ctx.stage}/"
        if self.portable:
            return Ref.to(metrics_logger, **(self._run or {"run_id": None, "uri": None}), prefix=prefix)
        return lambda metrics, step: self.ctx.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step)

    def probe_callback(self, every: int):
        """The probing snapshot callback (``posttrain.probing.probe_callback``), kept in the store."""
        if self.portable:
            return Ref.to(probe_callback, out_dir=str(self.ctx.out_dir), every=every, **(self._store or {}))
        from posttrain.probing import probe_callback as probe

        remote = self.ctx.checkpoints
        return probe(self.ctx.out_dir, every, on_saved=(lambda f: remote.keep(f, "probe")) if remote else None)
