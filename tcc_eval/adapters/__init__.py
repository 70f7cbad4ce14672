"""One adapter per MLLM family; importing this package registers them all."""

from .base import ADAPTERS, LLMInputs, MLLMAdapter, adapter_for, register_adapter
from . import llava_onevision, qwen2_5_vl, qwen2_vl, vila  # noqa: F401  (registration side effect)

__all__ = ["ADAPTERS", "LLMInputs", "MLLMAdapter", "adapter_for", "register_adapter"]
