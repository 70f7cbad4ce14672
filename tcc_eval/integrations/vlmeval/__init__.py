"""VLMEvalKit (ms-vlmeval 0.0.20) integration.

``register()`` adds the model matrix (``model_registry``), the synthetic datasets and two runner
fixes to VLMEvalKit's tables. It runs automatically when ``vlmeval.config`` is imported (the .pth hook
in ``autoregister.py``) and explicitly in ``python -m tcc_eval.run``.
"""

from .register import register

__all__ = ["register"]
