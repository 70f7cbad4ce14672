"""tcc-eval: task-related visual token compression for multimodal LLMs (input-stage pruning).

Public names are imported lazily so command-line tools (aggregate, demo paths) start without torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load": "api",
    "wrap_model": "api",
    "CompressedMLLM": "api",
    "explain": "oracle",
    "Explanation": "oracle",
    "TokenPrunedModel": "pruned",
    "Selection": "core",
    "keep_count": "core",
    "select_visual": "core",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'tcc_eval' has no attribute {name!r}")
