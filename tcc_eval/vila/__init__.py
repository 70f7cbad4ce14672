"""VILA1.5 (Efficient-Large-Model/VILA1.5-3b, Llama-3-VILA1.5-8b, VILA1.5-13b) on current transformers,
without the NVlabs VILA repository. See ``modeling_vila`` for the covered checkpoints and what is faithful."""

from .modeling_vila import (
    IMAGE_TOKEN_INDEX,
    VilaConfig,
    VilaForConditionalGeneration,
    VilaMultimodalProjector,
    check_checkpoint_shapes,
    expected_checkpoint_shapes,
    read_checkpoint_shapes,
)
from .processing_vila import CHAT_TEMPLATES, VilaProcessor, load_video_frames, sample_frame_indices

__all__ = [
    "CHAT_TEMPLATES",
    "IMAGE_TOKEN_INDEX",
    "VilaConfig",
    "VilaForConditionalGeneration",
    "VilaMultimodalProjector",
    "VilaProcessor",
    "check_checkpoint_shapes",
    "expected_checkpoint_shapes",
    "load_video_frames",
    "read_checkpoint_shapes",
    "sample_frame_indices",
]
