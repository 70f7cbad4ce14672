"""lmms-eval 0.7.3 integration: ``--model qwen2_vl_tcc`` / ``qwen2_5_vl_tcc`` / ``llava_onevision_tcc`` /
``vila_tcc`` (entry points in setup.py, payloads in ``manifests``, classes in ``models``) and ``check_results``
for scripts, because lmms-eval exits 0 even when an evaluation crashes. Import-light: nothing here loads
lmms-eval or the model classes.
"""

from .results import check_results

__all__ = ["check_results"]
