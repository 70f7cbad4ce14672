"""Registration with VLMEvalKit (ms-vlmeval 0.0.20), run by the .pth hook or ``python -m tcc_eval.run``.

VLMEvalKit has no plugin mechanism: its runner reads module-level tables, so registering means
adding entries to them (``supported_VLM``, ``supported_video_datasets``, ``DATASET_CLASSES``) before
``vlmeval.run.main()`` uses them. Every change here is additive except the two named wrappers
(``fix_video_dataset_kwargs``, ``track_inference``), which keep VLMEvalKit's behaviour for its own
models and datasets.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterable
from functools import partial
from typing import Any

from model_registry import ModelSpec, expand, parse_name

SIMULATE_BROKEN_ENV = "TCC_EVAL_SIMULATE_BROKEN"


def _unavailable(reason: str, **_: Any):
    raise NotImplementedError(reason)


def model_entry(spec: ModelSpec) -> partial:
    """The ``supported_VLM`` value for ``spec``: the family's wrapper with base/method/ratio bound."""
    from .wrappers import WRAPPERS

    if spec.base.unavailable or spec.base.family not in WRAPPERS:
        return partial(_unavailable, f"{spec.name}: {spec.base.unavailable or 'no VLMEvalKit wrapper for ' + spec.base.family}")
    return partial(
        WRAPPERS[spec.base.family], base=spec.base.name, method=spec.method, keep_ratio=spec.keep_ratio,
        **spec.base.options,
    )


def register_models(specs: Iterable[ModelSpec]) -> list[str]:
    """Add ``specs`` to ``vlmeval.config.supported_VLM``; names VLMEvalKit already has are left alone."""
    from vlmeval.config import supported_VLM

    added = []
    for spec in specs:
        current = supported_VLM.get(spec.name)
        if current is not None and not getattr(current, "tcc_eval", False):
            continue
        entry = model_entry(spec)
        entry.tcc_eval = True
        supported_VLM[spec.name] = entry
        added.append(spec.name)
    return added


def register_names(names: Iterable[str]) -> list[str]:
    """Register names outside the matrix that parse as ``<Base>_<Method><ratio>`` (e.g. Qwen2VL_TCC10)."""
    from vlmeval.config import supported_VLM

    specs = []
    for name in names:
        if name in supported_VLM:
            continue
        try:
            specs.append(parse_name(name))
        except ValueError:
            continue  # not ours: VLMEvalKit reports unknown names itself
    return register_models(specs)


def register_datasets() -> None:
    """TCCSynth_IMG / TCCSynth_VID: known to build_dataset, DATASET_TYPE/MODALITY and --config."""
    import vlmeval.dataset as vd
    from vlmeval.dataset.video_dataset_config import supported_video_datasets

    from .datasets import VIDEO_PRESETS, TCCSynthImage, TCCSynthVideo

    for cls, group in ((TCCSynthImage, vd.IMAGE_DATASET), (TCCSynthVideo, vd.VIDEO_DATASET)):
        for table in (group, vd.DATASET_CLASSES):
            if cls not in table:
                table.append(cls)
        setattr(vd, cls.__name__, cls)
        vd.SUPPORTED_DATASETS.extend(n for n in cls.supported_datasets() if n not in vd.SUPPORTED_DATASETS)
    for name, entry in VIDEO_PRESETS.items():
        supported_video_datasets[name] = entry


class KnownKwargsPartial(partial):
    """A video-dataset preset that ignores keyword arguments its class does not accept.

    Workaround for ms-vlmeval 0.0.20: ``run.py`` passes ``vars(args)`` (``data``, ``model``, ...) to
    ``build_dataset``, which forwards them unfiltered to ``supported_video_datasets`` entries, so every
    video set fails with ``TypeError: unexpected keyword argument 'data'``. Image sets filter by
    signature; this does the same for video presets. Keywords the preset fixes (nframe, fps, ...) win.
    Still a ``partial`` with ``.func``, as VLMEvalKit's status reporter expects.
    """

    def __call__(self, /, *args: Any, **kwargs: Any):
        params = inspect.signature(self.func).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params and k not in self.keywords}
        return super().__call__(*args, **kwargs)


def fix_video_dataset_kwargs() -> None:
    """Apply ``KnownKwargsPartial`` to every preset in ``supported_video_datasets`` (ours included)."""
    from vlmeval.dataset.video_dataset_config import supported_video_datasets

    for name, entry in supported_video_datasets.items():
        if isinstance(entry, partial) and not isinstance(entry, KnownKwargsPartial):
            supported_video_datasets[name] = KnownKwargsPartial(entry.func, *entry.args, **entry.keywords)


def track_inference() -> None:
    """Let our wrappers know the output folder and sample index (see records.py)."""
    import vlmeval.inference
    import vlmeval.inference_video

    from .records import track_inference as tracked

    for module in (vlmeval.inference, vlmeval.inference_video):
        module.infer_data = tracked(module.infer_data)


def register() -> list[str]:
    """Everything, idempotent. Returns the registered model names."""
    if os.environ.get(SIMULATE_BROKEN_ENV):
        raise RuntimeError(f"registration made to fail by {SIMULATE_BROKEN_ENV} (test switch)")
    import vlmeval.vlm

    from .wrappers import WRAPPERS

    for cls in WRAPPERS.values():  # so --config JSON can name them as "class"
        setattr(vlmeval.vlm, cls.__name__, cls)
    names = register_models(expand().values())
    if _datasets_module_importing():
        _deferred.append("datasets")  # datasets.py calls finish_deferred_registration() once complete
    else:
        register_datasets()
        fix_video_dataset_kwargs()
    track_inference()
    return names


_deferred: list[str] = []


def _datasets_module_importing() -> bool:
    """True while our datasets.py is itself being imported: its own ``vlmeval`` imports load
    ``vlmeval.config``, which fires the start-up hook before the dataset classes exist. (``_initializing``
    is set on a module's spec while the import system executes it.)"""
    module = sys.modules.get(f"{__package__}.datasets")
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def finish_deferred_registration() -> None:
    """Register the datasets whose registration had to wait for datasets.py (see register())."""
    if _deferred:
        _deferred.clear()
        register_datasets()
        fix_video_dataset_kwargs()
