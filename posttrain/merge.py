"""Expert fusion: a weighted average of checkpoints, streamed tensor by tensor.

VibeThinker 3B §2.1 "expert fusion" (1.5B §3.3; design.md §1.1): after SFT, the best
checkpoint per subdomain (the "experts" that diversity probing picked) are fused into one
model, ``merged = Σ_i w_i · M_i`` over every parameter, ``w_i >= 0``, ``Σ w_i = 1``; the 1.5B
report used ``w_i = 1/N``. All experts must share the architecture and the tokenizer: that is
checked first and a mismatch fails with a ``ValueError`` naming the folder and the field.

Not mergekit (0.1.5 installs cleanly here): it is LGPL-3.0-only, checks architectures by class
name only, never compares tokenizers, and its float32 linear merge does not return three
copies of a model bit for bit.

Memory stays flat whatever the model size: each tensor is read from every input in chunks
of ``CHUNK_ELEMENTS`` with plain ``readinto`` (no memory map, so resident memory is what the
merge really holds), and each fused chunk goes straight to its output file, whose header is
written first (every name, shape and dtype is known before the merge starts).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from posttrain.safetensors_io import (INDEX_FILE, SINGLE_FILE, TensorEntry, read_flat, tensor_index,
                                      write_safetensors)

ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB per output shard
CHUNK_ELEMENTS = 1 << 22  # elements read per input per step (16 MiB of float32), whatever the tensor size
MODEL_SIDE_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
# config.json keys that do not change what the weights mean. Keys starting with "_" are
# bookkeeping too; "*_token_id" keys are covered by the tokenizer check.
RUNTIME_CONFIG_KEYS = frozenset({"dtype", "torch_dtype", "transformers_version", "use_cache"})
# Tokenizer settings that change padding/truncation at call time, not the vocabulary.
RUNTIME_TOKENIZER_KEYS = frozenset({"padding_side", "truncation_side", "model_max_length", "is_local",
                                    "local_files_only", "name_or_path", "truncation", "padding"})


def _architecture(config: dict, prefix: str = "") -> dict:
    """config.json flattened to dotted keys, without the keys that do not change the weights."""
    out = {}
    for key, value in config.items():
        if key.startswith("_") or key in RUNTIME_CONFIG_KEYS or key.endswith("_token_id"):
            continue
        if isinstance(value, dict):
            out.update(_architecture(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    return json.loads(path.read_text())


def tokenizer_fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 per tokenizer file present, JSON files canonicalised without call-time settings.

    Raises:
        ValueError: if the folder holds no tokenizer files.
    """
    prints = {}
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name.endswith(".json"):
            tree = json.loads(data)
            if isinstance(tree, dict):
                tree = {k: v for k, v in tree.items() if k not in RUNTIME_TOKENIZER_KEYS}
            data = json.dumps(tree, sort_keys=True).encode()
        prints[name] = hashlib.sha256(data).hexdigest()
    if not prints:
        raise ValueError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return prints


def _first_difference(a: dict, b: dict) -> str | None:
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key] != b[key]:
            return key
    return None


def check_compatible(model_dirs: list[Path]) -> list[dict[str, TensorEntry]]:
    """Check that every folder can be fused with the first; return each folder's tensor index.

    Compared, in this order: config.json architecture fields (all keys but ``_*``, ``dtype``,
    ``torch_dtype``, ``transformers_version``, ``use_cache``, ``*_token_id``); tokenizer files
    (:func:`tokenizer_fingerprint`); tensor names, then each tensor's shape and dtype.

    Raises:
        ValueError: naming the folder and the first mismatching config field, tokenizer file or tensor.
    """
    ref_dir = model_dirs[0]
    ref_arch = _architecture(_read_config(ref_dir))
    ref_tok = tokenizer_fingerprint(ref_dir)
    ref_idx = tensor_index(ref_dir)
    indexes = [ref_idx]
    for d in model_dirs[1:]:
        arch = _architecture(_read_config(d))
        key = _first_difference(ref_arch, arch)
        if key is not None:
            there, here = arch.get(key, "<missing>"), ref_arch.get(key, "<missing>")
            raise ValueError(f"cannot fuse {d} with {ref_dir}: different architecture, config field {key!r} is "
                             f"{there!r} there and {here!r} in {ref_dir}")
        name = _first_difference(ref_tok, tokenizer_fingerprint(d))
        if name is not None:
            raise ValueError(f"cannot fuse {d} with {ref_dir}: different tokenizer ({name} differs or is missing)")
        idx = tensor_index(d)
        missing, extra = sorted(set(ref_idx) - set(idx)), sorted(set(idx) - set(ref_idx))
        if missing or extra:
            what = f"lacks tensor {missing[0]!r}" if missing else f"has an extra tensor {extra[0]!r}"
            raise ValueError(f"cannot fuse {d} with {ref_dir}: {d} {what}")
        for tname in sorted(ref_idx):
            a, b = ref_idx[tname], idx[tname]
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                raise ValueError(f"cannot fuse {d} with {ref_dir}: tensor {tname!r} is {b.dtype}{list(b.shape)} "
                                 f"there and {a.dtype}{list(a.shape)} in {ref_dir}")
        indexes.append(idx)
    return indexes


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """Fusion weights for ``n`` models: uniform ``1/n`` by default; given ones are divided by their sum.

    So ``[1, 1, 2]`` means ``[0.25, 0.25, 0.5]`` (design.md §1.1 asks for ``w_i >= 0, Σ w_i = 1``).

    Raises:
        ValueError: if ``n < 1``, the count differs from ``n``, a weight is negative or not finite,
            or they sum to 0.
    """
    if n < 1:
        raise ValueError("fusion needs at least one model")
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} fusion weights for {n} models")
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"fusion weights must be finite and >= 0, got {bad[0]}")
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("fusion weights sum to 0")
    return [w / total for w in weights]


def weighted_sum(tensors: list, weights: list[float]):
    """``Σ_i w_i · t_i`` for same-shape floating-point tensors, returned in the inputs' dtype.

    Accumulates in float64 (a float64 buffer of the tensors' size: callers pass chunks), then
    casts back once. With weights summing to 1, N identical float32/float16/bfloat16 inputs come
    back bit for bit: the float64 sum is within about N·2^-53 of x, far under half a float32
    ulp, so the cast rounds to x.
    """
    import torch

    acc = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for t, w in zip(tensors, weights):
        acc.add_(t, alpha=w)  # promoted to float64 element by element, no float64 copy of t
    return acc.to(tensors[0].dtype)


def merge_tensors(tensors: list, weights: list[float], name: str = "tensor"):
    """One fused tensor: ``(tensor, identical)``; inputs that are all equal come back unchanged.

    The equality shortcut makes identical inputs exact for every dtype (float64 and integer
    buffers included) and skips the arithmetic for tensors no expert changed; otherwise
    :func:`weighted_sum`.

    Raises:
        ValueError: if non-floating-point tensors (integer buffers) differ between inputs.
    """
    import torch

    first = tensors[0]
    if all(torch.equal(first, t) for t in tensors[1:]):
        return first, True
    if not first.is_floating_point():
        raise ValueError(f"tensor {name!r} is {first.dtype} and differs between models: cannot average it")
    return weighted_sum(tensors, weights), False


def _plan_shards(index: dict[str, TensorEntry], shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``shard_bytes`` (a bigger tensor gets its own)."""
    shards, size = [[]], 0
    for name in sorted(index):
        nbytes = index[name].end - index[name].start
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_merged(indexes: list[dict[str, TensorEntry]], weights: list[float], dest: Path, shard_bytes: int) -> dict:
    """Stream the weighted sum into ``dest``, ``CHUNK_ELEMENTS`` of a tensor at a time; returns counts."""
    active = [(idx, w) for idx, w in zip(indexes, weights) if w > 0]  # weight 0: never read
    ref = indexes[0]
    plan = _plan_shards(ref, shard_bytes)
    names = [SINGLE_FILE] if len(plan) == 1 else [f"model-{k:05d}-of-{len(plan):05d}.safetensors"
                                                  for k in range(1, len(plan) + 1)]
    counts = {"identical": 0, "parameters": 0}
    with ExitStack() as stack:
        handles: dict[Path, object] = {}

        def produce(tname: str):
            entries = [idx[tname] for idx, _ in active]
            for e in entries:
                if e.file not in handles:
                    handles[e.file] = stack.enter_context(open(e.file, "rb"))
            numel, identical = math.prod(ref[tname].shape), True
            for s in range(0, max(numel, 1), CHUNK_ELEMENTS):
                n = min(CHUNK_ELEMENTS, numel - s)
                parts = [read_flat(e, handles[e.file], s, n) for e in entries]
                fused, same = merge_tensors(parts, [w for _, w in active], tname)
                identical &= same
                yield fused
            counts["identical"] += identical
            counts["parameters"] += numel

        total = sum(write_safetensors(dest / fname, [(t, ref[t].dtype, ref[t].shape) for t in shard], produce)
                    for fname, shard in zip(names, plan))
    if len(names) > 1:
        weight_map = {t: fname for fname, shard in zip(names, plan) for t in shard}
        (dest / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                  indent=2, sort_keys=True))
    return {"tensors": len(ref), "identical_tensors": counts["identical"], "parameters": counts["parameters"],
            "bytes": total, "shards": len(names)}


def _copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config and tokenizer files, verbatim, from ``src``."""
    for name in MODEL_SIDE_FILES + TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def is_adapter(model_dir: Path) -> bool:
    """True for a PEFT adapter folder (``adapter_config.json``, no full model weights)."""
    return (model_dir / ADAPTER_CONFIG).is_file() and not (
        (model_dir / SINGLE_FILE).is_file() or (model_dir / INDEX_FILE).is_file())


def _staging(out_dir: Path) -> Path:
    """A fresh temporary folder next to ``out_dir`` (same filesystem, so the final rename is atomic).

    Raises:
        FileExistsError: if ``out_dir`` exists and is not empty.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by _staging); a folder that filled meanwhile makes this fail
    os.rename(tmp, out_dir)


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started, bytes.

    Linux ``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss``, it starts afresh at exec,
    so a child started by a big parent (``subprocess`` forks or vforks) does not report the
    parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


def current_rss_bytes() -> int:
    """This process's resident memory now, bytes (``/proc/self/statm``; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssSampler:
    """Peak resident memory over a ``with`` block, sampled every ``interval_s`` seconds by a thread.

    Unlike the process high-water mark (:func:`peak_rss_bytes`), it is not inflated by what ran
    before the block (training, a vLLM engine), and it leaves the high-water mark untouched.
    ``start_bytes`` and ``peak_bytes`` are set on exit.
    """

    def __init__(self, interval_s: float = 0.01):
        self.interval_s, self.start_bytes, self.peak_bytes = interval_s, 0, 0

    def __enter__(self) -> "RssSampler":
        import threading

        self.start_bytes = self.peak_bytes = current_rss_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


def fuse_checkpoints(model_dirs: list[Path], out_dir: Path, weights: list[float] | None = None, *,
                     base_dir: Path | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Fuse Hugging Face checkpoints into ``out_dir``: ``merged = Σ_i w_i · M_i`` (3B §2.1, design.md §1.1).

    ``model_dirs``: folders with ``config.json``, tokenizer files and safetensors weights (one
    file, or shards with ``model.safetensors.index.json``); a PEFT adapter folder is merged into
    ``base_dir`` first (:func:`merge_adapter`). ``weights``: one per model, ``>= 0``, divided by
    their sum (:func:`normalise_weights`); None = uniform ``1/N``. Output: same tensor names,
    shapes and dtypes as the inputs, in shards of at most ``shard_bytes`` bytes (plus an index
    when there is more than one); config, generation config and tokenizer copied from the first
    model. Written to a temporary folder next to ``out_dir`` and renamed into place, so
    ``out_dir`` is either complete or absent. Fusing a model with itself (any number of copies)
    returns it bit for bit (:func:`merge_tensors`).

    Peak memory, beyond the imported libraries, does not grow with the model or shard size:
    one chunk of ``CHUNK_ELEMENTS`` per input with nonzero weight, the fused chunk and a float64
    accumulator (about 16 MiB per float32 input plus 48 MiB).

    Returns ``{"inputs", "weights", "tensors", "identical_tensors", "parameters", "bytes",
    "shards", "seconds", "rss_start_bytes", "peak_rss_bytes"}``: resident memory when fusion
    started and its peak during fusion (sampled every 10 ms, :class:`RssSampler`).

    Raises:
        ValueError: different architecture, tokenizer, tensor names/shapes/dtypes (the message
            names the folder and the first mismatch), bad weights, an adapter without ``base_dir``.
        FileExistsError: if ``out_dir`` exists and is not empty.
    """
    start = time.perf_counter()
    model_dirs, out_dir = [Path(d) for d in model_dirs], Path(out_dir)
    weights = normalise_weights(weights, len(model_dirs))
    tmp = _staging(out_dir)
    with RssSampler() as sampler:
        try:
            inputs = []
            for k, d in enumerate(model_dirs):
                if is_adapter(d):
                    if base_dir is None:
                        raise ValueError(f"{d} is a PEFT adapter: pass base_dir, the model it was trained on")
                    merge_adapter(Path(base_dir), d, tmp / "_adapters" / str(k))
                    d = tmp / "_adapters" / str(k)
                inputs.append(d)
            stats = _write_merged(check_compatible(inputs), weights, tmp, shard_bytes)
            _copy_side_files(inputs[0], tmp)
            shutil.rmtree(tmp / "_adapters", ignore_errors=True)
            _publish(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"inputs": [str(d) for d in model_dirs], "weights": weights, **stats,
            "seconds": time.perf_counter() - start, "rss_start_bytes": sampler.start_bytes,
            "peak_rss_bytes": sampler.peak_bytes}


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """Merge a PEFT (LoRA) adapter into its base model's full weights: ``W + (alpha/r) · B A``.

    Loads the base in its stored dtype, applies ``peft``'s ``merge_and_unload``, saves
    safetensors to ``out_dir`` (atomically, as :func:`fuse_checkpoints`) with the tokenizer
    files copied verbatim from the adapter folder when it has them, else from the base.

    Returns ``{"base", "adapter", "parameters", "seconds"}``.

    Raises:
        ValueError: if ``adapter_dir`` holds no ``adapter_config.json``.
        FileExistsError: if ``out_dir`` exists and is not empty.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    tmp = _staging(out_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        parameters = sum(p.numel() for p in model.parameters())
        tok_src = adapter_dir if any((adapter_dir / n).is_file() for n in TOKENIZER_FILES) else base_dir
        for name in TOKENIZER_FILES:
            if (tok_src / name).is_file():
                shutil.copy2(tok_src / name, tmp / name)
        if (base_dir / "generation_config.json").is_file():
            shutil.copy2(base_dir / "generation_config.json", tmp / "generation_config.json")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"base": str(base_dir), "adapter": str(adapter_dir), "parameters": parameters,
            "seconds": time.perf_counter() - start}
