"""Safetensors files read and written piece by piece: headers, sharded folders, chunked reads.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header mapping each tensor name to ``{dtype, shape, data_offsets}``, then the raw data.
Reading tensors in chunks with ``readinto`` and writing a file whose header is known up front
keeps memory flat whatever the model size (``posttrain.merge`` streams expert fusion this way).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file, safetensors dtype (``"F32"``), shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


# Bytes per element of the safetensors dtypes (sub-byte ones such as F4 are not size-checked).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header, bytes


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one ``.safetensors`` file, from its JSON header only (no tensor data read).

    The header is checked as safetensors itself checks it on load: well-formed entries, each
    tensor's byte range matching its dtype and shape, the ranges contiguous from 0, and together
    covering the file to its last byte.

    Raises:
        CheckpointError: (a ``ValueError``) naming the file, "truncated" when it is shorter than
            its header says, "corrupt" otherwise.
    """
    from posttrain.modeling import CheckpointError

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"truncated: {size} bytes, shorter than a safetensors header")
        length = struct.unpack("<Q", head)[0]
        if not 0 < length <= _MAX_HEADER:
            raise CheckpointError(path, f"corrupt: not a safetensors file (header length {length})")
        if 8 + length > size:
            raise CheckpointError(path, f"truncated: the header needs {length} bytes, {size - 8} follow")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError(f"a JSON {type(header).__name__}, not an object")
    except (ValueError, RecursionError) as e:
        raise CheckpointError(path, f"corrupt: not a safetensors file (header: {e})") from None
    header.pop("__metadata__", None)
    base = 8 + length
    entries: dict[str, TensorEntry] = {}
    for name, h in header.items():
        try:
            dtype, shape, (start, end) = h["dtype"], tuple(h["shape"]), h["data_offsets"]
            if not (isinstance(dtype, str) and all(type(d) is int and d >= 0 for d in shape)
                    and type(start) is int and type(end) is int and 0 <= start <= end):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(path, f"corrupt: malformed header entry for tensor {name!r}") from None
        entries[name] = TensorEntry(path, dtype, shape, base + start, base + end)
    data_end = max((e.end for e in entries.values()), default=base)
    if data_end > size:
        raise CheckpointError(path, f"truncated: its tensors end at byte {data_end}, the file holds {size}")
    position = base
    for name, e in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if e.dtype in _ITEMSIZE and e.end - e.start != math.prod(e.shape) * _ITEMSIZE[e.dtype]:
            raise CheckpointError(path, f"corrupt: tensor {name!r} is {e.dtype}{list(e.shape)} in "
                                        f"{e.end - e.start} bytes")
        if e.start != position:
            raise CheckpointError(path, f"corrupt: tensor {name!r} starts at byte {e.start}, not {position}")
        position = e.end
    if position != size:
        raise CheckpointError(path, f"corrupt: {size - position} bytes after the last tensor")
    return entries


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder: the index's shards, or ``model.safetensors``.

    Raises:
        ValueError: if the folder holds no safetensors weights; ``CheckpointError`` (a
            ``ValueError``) for an unreadable index or a shard it names that is missing.
    """
    from posttrain.modeling import CheckpointError, _weight_map

    index = model_dir / INDEX_FILE
    if index.is_file():
        files = sorted({model_dir / f for f in _weight_map(index).values()})
        for f in files:
            if not f.is_file():
                raise CheckpointError(index, f"truncated checkpoint: it names shard {f.name!r}, which is missing")
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if not files:
        raise ValueError(f"{model_dir}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")
    return files


def tensor_index(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a model folder by name, across shards (headers only).

    Raises:
        ValueError: if the folder holds no weights or a tensor is stored twice.
    """
    entries: dict[str, TensorEntry] = {}
    for f in weight_files(model_dir):
        for name, entry in read_header(f).items():
            if name in entries:
                raise ValueError(f"{model_dir}: tensor {name!r} is stored twice ({entries[name].file.name}, {f.name})")
            entries[name] = entry
    return entries


def read_flat(entry: TensorEntry, handle, offset: int = 0, count: int | None = None):
    """Elements ``[offset, offset + count)`` of a stored tensor, flattened, read into fresh memory.

    ``handle``: the open file (binary); ``readinto``, not a memory map, so resident memory is
    only what is returned. ``count=None``: to the end.

    Raises:
        CheckpointError: (a ``ValueError``) if the stored byte range does not match the dtype and
            shape ("corrupt"), or the file is short ("truncated").
    """
    import torch

    from posttrain.modeling import CheckpointError

    dtype = getattr(torch, _DTYPES[entry.dtype])
    numel = math.prod(entry.shape)
    if entry.end - entry.start != numel * dtype.itemsize:
        raise CheckpointError(entry.file, f"corrupt: a {entry.dtype}{list(entry.shape)} tensor in "
                                          f"{entry.end - entry.start} bytes")
    count = numel - offset if count is None else count
    flat = torch.empty(count, dtype=dtype)
    if count:
        handle.seek(entry.start + offset * dtype.itemsize)
        if handle.readinto(memoryview(flat.view(torch.uint8).numpy())) != count * dtype.itemsize:
            raise CheckpointError(entry.file, f"truncated: tensor data ends before byte {entry.end}")
    return flat


def write_safetensors(path: Path, layout: list[tuple[str, str, tuple[int, ...]]], produce) -> int:
    """Write a safetensors file whose header is known up front, piece by piece.

    ``layout``: ``(name, safetensors dtype, shape)`` in file order; ``produce(name)`` yields that
    tensor's elements in order, flattened, in pieces of that dtype, when its turn comes, so only
    one piece is in memory at once. Returns the data bytes written.

    Raises:
        ValueError: if a produced tensor's size differs from its layout.
    """
    import torch

    header, offset = {}, 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * getattr(torch, _DTYPES[dtype]).itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors itself writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, _, _ in layout:
            written = 0
            for piece in produce(name):
                data = piece.contiguous().view(-1).view(torch.uint8)
                f.write(memoryview(data.numpy()))
                written += data.numel()
            start, end = header[name]["data_offsets"]
            if written != end - start:
                raise ValueError(f"{path}: tensor {name!r} has {written} bytes, its layout {end - start}")
    return offset
