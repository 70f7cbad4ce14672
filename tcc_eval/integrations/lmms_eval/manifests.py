"""Entry-point payloads for lmms-eval's ``lmms_eval.models`` group (see setup.py).

lmms-eval 0.7.3 resolves ``--model NAME`` through ``ModelManifest`` objects with string class paths,
so this module must stay import-light: the model classes (torch, transformers, decord) load only when
a run asks for them. ``qwen2_5_vl_tcc`` and ``llava_onevision_tcc`` mirror upstream ``qwen2_5_vl`` and
``llava_hf``: the chat class by default, the simple one with ``--force_simple``; ``qwen2_vl_tcc`` and ``vila_tcc``
mirror upstream ``qwen2_vl`` and ``vila`` (simple only).
"""

from lmms_eval.models.registry_v2 import ModelManifest

_MODELS = "tcc_eval.integrations.lmms_eval.models"

qwen2_vl_tcc = ModelManifest(model_id="qwen2_vl_tcc", simple_class_path=f"{_MODELS}.Qwen2VLTCC")

qwen2_5_vl_tcc = ModelManifest(
    model_id="qwen2_5_vl_tcc",
    simple_class_path=f"{_MODELS}.Qwen25VLTCC",
    chat_class_path=f"{_MODELS}.Qwen25VLTCCChat",
)

llava_onevision_tcc = ModelManifest(
    model_id="llava_onevision_tcc",
    simple_class_path=f"{_MODELS}.LlavaOneVisionTCC",
    chat_class_path=f"{_MODELS}.LlavaOneVisionTCCChat",
)

vila_tcc = ModelManifest(model_id="vila_tcc", simple_class_path=f"{_MODELS}.VilaTCC")
