"""Expert fusion time and peak memory against the model size (3B §2.1; design.md §1.1).

Not a test: run it by hand on an idle machine, e.g.

    .venv/bin/python benchmarks/fusion_memory.py --copies 2,3 --shard-mb 1024,64 --naive

``--model smollm2`` (default) converts the shipped GGUF once into ./.cache/bench-smollm2; any
model folder works. Writes N-1 perturbed copies of the model (x + 1e-3·noise per tensor) next
to it, then per setting runs :func:`posttrain.merge.fuse_checkpoints` in a fresh process and
prints seconds and peak RSS (``VmHWM``), also as a multiple of the model's weight size,
beside the RSS of a process that only imported the same modules (the floor). ``--naive`` adds
the load-every-state-dict-then-average way for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from posttrain.merge import fuse_checkpoints, peak_rss_bytes
from posttrain.safetensors_io import weight_files
args = json.loads(sys.argv[1])
floor = peak_rss_bytes()
dirs = [Path(d) for d in args["inputs"]]
if args["naive"]:
    t0 = time.perf_counter()
    states = [{k: v for f in weight_files(d) for k, v in load_file(f).items()} for d in dirs]
    out = {k: sum(s[k].double() for s in states).div(len(states)).to(states[0][k].dtype) for k in states[0]}
    Path(args["out"]).mkdir()
    save_file(out, str(Path(args["out"]) / "model.safetensors"), metadata={"format": "pt"})
    summary = {"seconds": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes()}
else:
    summary = fuse_checkpoints(dirs, Path(args["out"]), shard_bytes=args["shard_bytes"])
summary["floor_rss_bytes"] = floor
print(json.dumps(summary))
"""


def _model(name: str) -> Path:
    if name != "smollm2":
        return Path(name)
    from posttrain.config import ModelSpec
    from posttrain.modeling import prepare_model

    folder = REPO / ".cache/bench-smollm2"
    if not (folder / "config.json").is_file():
        prepare_model(ModelSpec(source="smollm2"), folder)
    return folder


def _perturbed_copy(src: Path, dst: Path, seed: int) -> None:
    """``src`` with 1e-3·N(0,1) added to every floating tensor (one shard in memory at a time)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from posttrain.safetensors_io import INDEX_FILE, weight_files

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for f in weight_files(src):
        tensors = load_file(f)
        for k, t in tensors.items():
            if t.is_floating_point():
                tensors[k] = t + 1e-3 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
    if (src / INDEX_FILE).is_file():
        shutil.copy2(src / INDEX_FILE, dst / INDEX_FILE)


def _run(inputs: list[Path], out: Path, shard_bytes: int, naive: bool) -> dict:
    arg = json.dumps({"inputs": [str(p) for p in inputs], "out": str(out), "shard_bytes": shard_bytes,
                      "naive": naive})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"fusion child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--copies", default="2,3", help="comma-separated numbers of models to fuse")
    ap.add_argument("--shard-mb", default="1024,64", help="comma-separated output shard sizes, MiB")
    ap.add_argument("--naive", action="store_true", help="also time load-everything-then-average")
    args = ap.parse_args()

    from posttrain.safetensors_io import tensor_index

    model = _model(args.model)
    size = sum(e.end - e.start for e in tensor_index(model).values())
    copies = [int(c) for c in args.copies.split(",")]
    print(f"model {model}: {size / 2**20:.0f} MiB of weights")
    print(f"{'method':>8} {'models':>6} {'shard MiB':>9} {'seconds':>8} {'peak RSS MiB':>12} {'floor MiB':>9} "
          f"{'peak-floor MiB':>14} {'(peak-floor)/size':>17}")
    with tempfile.TemporaryDirectory(dir=REPO / ".cache", prefix="bench-fusion-") as work:
        work = Path(work)
        inputs = [model] + [work / f"copy{k}" for k in range(1, max(copies))]
        for k, d in enumerate(inputs[1:], start=1):
            _perturbed_copy(model, d, seed=k)
        settings = [("stream", n, int(mb) << 20) for n in copies for mb in args.shard_mb.split(",")]
        settings += [("naive", n, 0) for n in copies] if args.naive else []
        for k, (method, n, shard) in enumerate(settings):
            s = _run(inputs[:n], work / f"out{k}", shard, method == "naive")
            extra = (s["peak_rss_bytes"] - s["floor_rss_bytes"]) / size
            shard_txt = f"{shard >> 20}" if shard else "-"
            print(f"{method:>8} {n:>6} {shard_txt:>9} {s['seconds']:>8.1f} {s['peak_rss_bytes'] / 2**20:>12.0f} "
                  f"{s['floor_rss_bytes'] / 2**20:>9.0f} "
                  f"{(s['peak_rss_bytes'] - s['floor_rss_bytes']) / 2**20:>14.0f} {extra:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
