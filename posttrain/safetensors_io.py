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


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one ``.safetensors`` file, from its JSON header only (no tensor data read).

    Raises:
        ValueError: if the file is not a safetensors file.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < size < 1 << 30:
            raise ValueError(f"{path}: not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    base = 8 + size
    return {name: TensorEntry(path, h["dtype"], tuple(h["shape"]), base + h["data_offsets"][0],
                              base + h["data_offsets"][1]) for name, h in header.items()}


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder: the index's shards, or ``model.safetensors``.

    Raises:
        ValueError: if the folder holds no safetensors weights.
    """
    index = model_dir / INDEX_FILE
    if index.is_file():
        return sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
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
        ValueError: if the stored byte range does not match the dtype and shape, or the file is short.
    """
    import torch

    dtype = getattr(torch, _DTYPES[entry.dtype])
    numel = math.prod(entry.shape)
    if entry.end - entry.start != numel * dtype.itemsize:
        raise ValueError(f"{entry.file}: a {entry.dtype}{list(entry.shape)} tensor in {entry.end - entry.start} bytes")
    count = numel - offset if count is None else count
    flat = torch.empty(count, dtype=dtype)
    if count:
        handle.seek(entry.start + offset * dtype.itemsize)
        if handle.readinto(memoryview(flat.view(torch.uint8).numpy())) != count * dtype.itemsize:
            raise ValueError(f"{entry.file}: truncated")
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
