"""lmms-eval task definitions shipped with tcc-eval (``tccsynth_img``, ``tccsynth_vid``).

Use them with ``python -m lmms_eval --include_path $(python -c "import tcc_eval.lmms_tasks as t; print(t.TASKS_DIR)")``.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["TASKS_DIR"]
