"""Training under ``accelerate launch``: the same training function on every rank, in subprocesses.

A training function decorated with :func:`launchable` (``posttrain.sft.train_sft``,
``posttrain.rl.stage.train_phase``) takes ``launch: LaunchSpec``. With ``launch.num_processes``
above 1 the call does not train in this process; it

1. writes a spec folder: ``spec.json`` names the function (``module:name``) and its arguments
   (paths as strings, pydantic specs as dicts with their class, dataclasses field by field);
   list arguments of records or pairs go to ``<argument>.jsonl`` beside it;
2. starts ``python -m accelerate.commands.launch --num_processes N --num_machines M ...
   -m posttrain.launch <spec.json>`` with this interpreter (``--config_file`` when set, a free
   ``--main_process_port`` when None) and waits, echoing the children's stderr;
3. each rank decodes the spec and calls the same function in-process; rank 0 saves the model and
   writes ``result.json``, which the parent reads back and returns: the caller gets exactly what
   the in-process call returns. A failed child raises ``RuntimeError`` naming the exit code and
   the last lines of its stderr (the spec folder is kept for inspection).

``launch.cpu`` (tests, CI) runs the ranks on CPU with gloo. accelerate 1.15's ``--cpu`` goes to
its simple launcher, which starts one process unless an MPI hostfile is given; so we use the
torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``, which makes
``TrainingArguments``' accelerator state pick ``MULTI_CPU`` and gloo, and ``OMP_NUM_THREADS`` =
cores / processes (1 each on 2 cores).

**What crosses the process boundary.** Objects cannot: trainer callbacks, ``upload`` hooks and
metric loggers are passed as :class:`Ref` instead, a factory named by import path with JSON
arguments that every rank rebuilds (:class:`Sinks` builds a stage's side channels from its
``StageContext``, as objects in-process and as refs when launched):

- metrics: rank 0 logs to the stage's own MLflow run (``Tracker(run_id, uri)``), under the same
  ``train/<stage>/<name>`` keys as the in-process callback (:func:`mlflow_callback`,
  :func:`metrics_logger`); the other ranks log nothing;
- checkpoints: the children mirror them themselves, to the same ``RemoteCheckpoints`` prefix of
  the same store, reopened from its URI (:func:`checkpoint_uploader`: all ranks meet at a
  barrier, so every rank's RNG state is in the folder, then rank 0 uploads). A subclass of
  ``RemoteCheckpoints`` (e.g. a test's fault injection) is rebuilt as the plain class;
- progress (``ctx.progress``): rank 0 prints marked lines to stderr, which the parent reads and
  passes to the stage's report (:func:`progress_relay`);
- held-out evaluations (RL) and probe snapshots (SFT) run on rank 0 with the unwrapped model,
  so they need a model that is whole on each rank (DDP; not ZeRO-3 or FSDP sharding).

One machine only: with ``num_machines > 1`` the other machines must start the same command
with their ``machine_rank`` (e.g. from the accelerate config file); this module starts rank 0's.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from posttrain.sinks import PROGRESS_MARK, Ref, process_rank, relay_progress, resolve_target

log = logging.getLogger(__name__)

SPEC = "spec.json"
RESULT = "result.json"
STDERR_TAIL = 60  # lines of the children's stderr quoted in the error of a failed launch


# ---------------------------------------------------------------- the spec file


def encode(obj: Any, where: str = "argument") -> Any:
    """``obj`` as JSON with tags for what JSON lacks: ``$path``, ``$model`` (pydantic, with its
    class), ``$dataclass``, ``$ref``.

    Raises:
        TypeError: naming ``where``, for anything else (a callable, a callback object): such
            arguments must be passed as a :class:`Ref` to cross into the training processes.
    """
    from pydantic import BaseModel

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return {"$path": str(obj)}
    if isinstance(obj, Ref):
        return {"$ref": obj.target, "kwargs": encode(obj.kwargs, f"{where}.kwargs")}
    if isinstance(obj, BaseModel):
        cls = type(obj)
        return {"$model": f"{cls.__module__}:{cls.__qualname__}", "data": obj.model_dump(mode="json")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {"$dataclass": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: encode(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict) and all(isinstance(k, str) and not k.startswith("$") for k in obj):
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    raise TypeError(f"{where}: {obj!r} cannot cross into the training processes of `accelerate launch`: "
                    f"pass a posttrain.sinks.Ref that builds it there")


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$path" in obj:
        return Path(obj["$path"])
    if "$ref" in obj:
        return Ref(obj["$ref"], decode(obj["kwargs"]))
    if "$model" in obj:
        return resolve_target(obj["$model"]).model_validate(obj["data"])
    if "$dataclass" in obj:
        return resolve_target(obj["$dataclass"])(**{k: decode(v) for k, v in obj["fields"].items()})
    return {k: decode(v) for k, v in obj.items()}


def _is_rows(value: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(value, list) and bool(value) and all(isinstance(v, (dict, BaseModel)) for v in value)


def write_spec(folder: Path, target: str, arguments: dict[str, Any]) -> Path:
    """Write ``spec.json`` (and ``<name>.jsonl`` per list of records or pairs) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded: dict[str, Any] = {}
    for name, value in arguments.items():
        if _is_rows(value):
            with (folder / f"{name}.jsonl").open("w") as f:
                for i, row in enumerate(value):
                    f.write(json.dumps(encode(row, f"{name}[{i}]"), ensure_ascii=False) + "\n")
            encoded[name] = {"$jsonl": f"{name}.jsonl"}
        else:
            encoded[name] = encode(value, name)
    path = folder / SPEC
    path.write_text(json.dumps({"target": target, "arguments": encoded}, indent=1))
    return path


def read_spec(path: Path) -> tuple[str, dict[str, Any]]:
    """``(target, arguments)`` from a spec written by :func:`write_spec`."""
    spec = json.loads(Path(path).read_text())
    arguments = {}
    for name, value in spec["arguments"].items():
        if isinstance(value, dict) and "$jsonl" in value:
            lines = (Path(path).parent / value["$jsonl"]).read_text().splitlines()
            arguments[name] = [decode(json.loads(line)) for line in lines if line]
        else:
            arguments[name] = decode(value)
    return spec["target"], arguments


# ---------------------------------------------------------------- parent side


def launchable(func: Callable) -> Callable:
    """Run ``func`` under ``accelerate launch`` when its ``launch`` argument asks for more than one
    process; otherwise (``launch`` None or one process) call it here, unchanged."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        spec = bound.arguments.get("launch")
        if spec is None or spec.num_processes <= 1:
            return func(*args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "launch"}
        return run_launched(f"{func.__module__}:{func.__qualname__}", spec, arguments)

    return wrapper


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launch, spec_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment for ``launch`` (a ``LaunchSpec``)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(launch.num_processes),
           "--num_machines", str(launch.num_machines), "--main_process_port", str(port)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if launch.config_file:
        cmd += ["--config_file", launch.config_file]
    else:
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if launch.cpu:  # torchrun processes that pick gloo (see the module docstring for why not --cpu)
        cmd += ["--multi_gpu"]
        per_machine = max(1, launch.num_processes // launch.num_machines)
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS")
                   or str(max(1, (os.cpu_count() or 1) // per_machine)))
    elif not launch.config_file:
        cmd += ["--multi_gpu"]  # plain DDP
    return cmd + ["-m", "posttrain.launch", str(spec_path)], env


def run_launched(target: str, launch, arguments: dict[str, Any]) -> Any:
    """Run ``target(**arguments)`` on ``launch.num_processes`` ranks; return rank 0's result.

    Raises:
        RuntimeError: naming the exit code and the last lines of the children's stderr, if the
            launch fails (the spec folder is then kept and named).
    """
    folder = Path(tempfile.mkdtemp(prefix="posttrain-launch-"))
    spec_path = write_spec(folder, target, arguments)
    cmd, env = launch_command(launch, spec_path, launch.main_process_port or free_port())
    log.info("%s: accelerate launch, %d processes on %d machine(s): %s", target, launch.num_processes,
             launch.num_machines, " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    try:
        for line in proc.stderr:
            if line.startswith(PROGRESS_MARK):
                relay_progress(line)
                continue
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    except BaseException:  # interrupted (Ctrl-C, a cancelled flow): stop the ranks too
        _stop(proc)
        raise
    result = folder / RESULT
    if code != 0 or not result.is_file():
        why = f"exited with code {code}" if code != 0 else "wrote no result"
        errors = "".join(f"\n  {p.stem}: {p.read_text().strip().splitlines()[-1]}"
                         for p in sorted(folder.glob("error-rank*.txt")) if p.read_text().strip())
        raise RuntimeError(f"{target} under accelerate launch ({launch.num_processes} processes) {why}; "
                           f"spec in {folder}{errors}\nlast lines of its stderr:\n{''.join(tail)}")
    out = json.loads(result.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- child side


def main(spec_path: str) -> None:
    """One rank: decode the spec, call the function in-process; rank 0 writes ``result.json``."""
    from posttrain.redact import install_log_redaction

    install_log_redaction()  # as in the flow's process: no credential value in any log record
    rank = process_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    target, arguments = read_spec(Path(spec_path))
    try:
        result = resolve_target(target)(**arguments)
    except BaseException:  # the parent quotes each rank's exception (stderr ends with the launcher's)
        import traceback

        Path(spec_path).with_name(f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    if rank == 0:
        tmp = Path(spec_path).with_name(RESULT + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(tmp.with_name(RESULT))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    # through the package module, so the classes the spec decodes to (Ref) are the ones the
    # training code checks against, not copies defined in __main__
    from posttrain.launch import main as rank_main

    rank_main(sys.argv[1])
