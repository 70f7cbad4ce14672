"""tcc-eval: task-related visual token compression for multimodal LLMs (input-stage pruning)."""

from .api import CompressedMLLM, load, wrap_model
from .core import Selection, keep_count, select_visual
from .oracle import Explanation, explain
from .pruned import TokenPrunedModel

__all__ = ["CompressedMLLM", "Explanation", "explain", "Selection", "TokenPrunedModel", "keep_count", "load", "select_visual", "wrap_model"]
__version__ = "0.1.0"
