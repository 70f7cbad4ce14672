"""Interpreter-start hook: registers tcc-eval's models and datasets with VLMEvalKit right after
``vlmeval.config`` executes, so ``python -m vlmeval.run --model Qwen2VL_TCC50 ...`` works as is.

``tcc_eval_vlmeval.pth`` (installed into site-packages) loads this file by path, so interpreter
start-up imports neither tcc_eval nor torch: ``install()`` only puts a finder on ``sys.meta_path``.
The finder wraps the loader of ``vlmeval.config`` and nothing else; the real work happens only when,
and if, that module is imported. Nothing here may break start-up or VLMEvalKit: every failure
becomes a single line on stderr. Keep this module free of non-stdlib imports.

Environment: ``TCC_EVAL_NO_AUTOREGISTER=1`` disables the hook; ``TCC_EVAL_DEBUG=1`` prints the
traceback of a failed registration.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only names for hints: this module runs at every interpreter start (the .pth hook)
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

TARGET = "vlmeval.config"
DISABLE_ENV = "TCC_EVAL_NO_AUTOREGISTER"
DEBUG_ENV = "TCC_EVAL_DEBUG"


def warn(message: str) -> None:
    """One line on stderr, whatever ``message`` contains."""
    try:
        sys.stderr.write("tcc-eval: " + " ".join(str(message).split())[:400] + "\n")
    except Exception:  # noqa: BLE001, S110 - a closed stderr must not matter either
        pass


def register_quietly() -> None:
    """Register with VLMEvalKit; on any failure print one line and leave VLMEvalKit untouched."""
    try:
        from tcc_eval.integrations.vlmeval.register import register

        register()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - whatever breaks, VLMEvalKit must run on
        if getattr(err, "tcc_eval_stop", False):  # a requested name of ours that is not valid: say why and stop
            raise
        if os.environ.get(DEBUG_ENV):
            import traceback

            traceback.print_exc()
        warn(
            f"models not registered with VLMEvalKit ({type(err).__name__}: {err}); "
            f"set {DEBUG_ENV}=1 for the traceback"
        )


class _RegisterAfterExec:
    """Loader proxy: runs the real loader, then registers. Other loader methods pass through."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_quietly()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class VlmevalConfigFinder:
    """``sys.meta_path`` finder that only answers for ``vlmeval.config``, by asking the other finders."""

    tcc_eval_hook = True  # marker: this file may be loaded under two module names

    def __init__(self):
        self._busy = False

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != TARGET or self._busy:
            return None
        self._busy = True  # the nested lookup below must skip this finder
        try:
            from importlib.util import find_spec

            spec = find_spec(fullname)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisterAfterExec(spec.loader)
            return spec
        except Exception as err:  # noqa: BLE001 - never break an import
            warn(f"VLMEvalKit hook skipped ({type(err).__name__}: {err})")
            return None
        finally:
            self._busy = False


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent); register at once if vlmeval.config is loaded."""
    if os.environ.get(DISABLE_ENV):
        return
    if TARGET in sys.modules:
        register_quietly()
        return
    if not any(getattr(finder, "tcc_eval_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, VlmevalConfigFinder())
