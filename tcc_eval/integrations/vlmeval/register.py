"""Registration with VLMEvalKit (ms-vlmeval 0.0.20), run by the .pth hook or ``python -m tcc_eval.run``.

VLMEvalKit has no plugin mechanism: its runner reads module-level tables, so registering means
adding entries to them (``supported_VLM``, ``supported_video_datasets``, ``DATASET_CLASSES``) before
``vlmeval.run.main()`` uses them. Every change here is additive except the named wrappers, which keep
VLMEvalKit's behaviour for its own models and datasets: ``fix_video_dataset_kwargs`` (video presets drop the
runner's extra kwargs) and ``track_inference``, which wraps ``infer_data`` (``records.track_inference`` notes the
sample a prompt is built for) and the three ``infer_data_job*`` (``records.checking_variant`` refuses a folder
holding another variant's results of the name). The integration's other patches are scoped to one call and
undone after it, each with its reason: ``wrappers.keeping_video_metadata`` keeps the frame timing qwen_vl_utils
sampled, ``wrappers._ToDevice`` moves a processor's output to the model and ``wrappers._ToDeviceVideoFix`` drops
the ``<image>`` line LLaVA-OneVision video prompts carry. One is not undone: ``wrappers.restore_world_size`` puts
back the WORLD_SIZE that VLMEvalKit's model builder removed.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from model_registry import ModelSpec, all_bases, expand, has_our_suffix, parse_name

SIMULATE_BROKEN_ENV = "TCC_EVAL_SIMULATE_BROKEN"


def _unavailable(reason: str, **_: Any):
    raise NotImplementedError(reason)


def model_entry(spec: ModelSpec) -> partial:
    """The ``supported_VLM`` value for ``spec``: the family's wrapper with base/method/ratio bound."""
    from .wrappers import WRAPPERS

    if spec.base.unavailable or spec.base.family not in WRAPPERS:
        why = spec.base.unavailable or f"no VLMEvalKit wrapper for {spec.base.family}"
        return partial(_unavailable, f"{spec.name}: {why}")
    entry = NamedModelPartial(
        WRAPPERS[spec.base.family], base=spec.base.name, method=spec.method, keep_ratio=spec.keep_ratio,
        **spec.base.options,
    )
    entry.model_name = spec.name
    return entry


def _same_value(given: Any, named: Any) -> bool:
    """``"0.5"`` from a --config file is the ratio 0.5."""
    if isinstance(named, float) and not isinstance(given, bool):
        try:
            return float(given) == named
        except (TypeError, ValueError):
            return False
    return given == named


class NamedModelPartial(partial):
    """A registered name's constructor: a ``--config`` entry may add options but not change what the name says.

    VLMEvalKit calls an entry without ``"class"`` with its keys, which would override the bound base, method or
    ratio: the run would write under (and the tables label it by) a name whose method and ratio it did not run.
    """

    NAMED = ("base", "method", "keep_ratio")

    def __call__(self, /, *args: Any, **kwargs: Any):
        for key in self.NAMED:
            if key in kwargs and not _same_value(kwargs[key], self.keywords[key]):
                raise ValueError(
                    f"{self.model_name} runs {key}={self.keywords[key]!r}, as its name says, but its --config entry "
                    f"sets {key}={kwargs[key]!r}: use the name of the model you mean (<Base>_<Method><ratio>, e.g. "
                    f"Qwen2VL_Random25) and keep --config entries for the other options")
        return super().__call__(*args, **kwargs)


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


class BadModelName(SystemExit):
    """A requested model name that reads as ours but is not valid (a typo in the base, a ratio of 150): stop with
    the reason, where VLMEvalKit would raise a bare KeyError per name and exit 0."""

    tcc_eval_stop = True  # the start-up hook lets this one through (autoregister.register_quietly)


def register_names(names: Iterable[str]) -> list[str]:
    """Register names outside the matrix that parse as ``<Base>_<Method><ratio>`` (e.g. Qwen2VL_TCC10)."""
    from vlmeval.config import supported_VLM

    specs = []
    for name in names:
        if name in supported_VLM:
            continue
        try:
            specs.append(parse_name(name))
        except ValueError as err:
            if reads_as_ours(name):
                raise BadModelName(f"tcc-eval: {err}") from None
            # not ours: VLMEvalKit reports unknown names itself
    return register_models(specs)


def reads_as_ours(name: str) -> bool:
    """``<registered base>_...`` or ``..._<method token><digits>`` / ``..._Vanilla``."""
    return has_our_suffix(name) or name.partition("_")[0] in all_bases()


def _values(argv: list[str], flag: str) -> list[str]:
    values: list[str] = []
    taking = False
    for arg in argv:
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
            taking = False
        elif arg == flag:
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking:
            values.append(arg)
    return values


def requested_models(argv: list[str]) -> list[str]:
    """Model names of a vlmeval.run command line that must be in ``supported_VLM``: ``--model`` values and the
    ``--config`` JSON's models without a ``"class"`` (VLMEvalKit builds those from the class it names)."""
    names = _values(argv, "--model")
    for config in _values(argv, "--config")[:1]:
        try:
            with open(config, encoding="utf-8") as f:
                models = json.load(f).get("model", {})
            names += [name for name, entry in models.items() if not (isinstance(entry, dict) and "class" in entry)]
        except (OSError, ValueError, AttributeError):
            pass  # vlmeval.run reports a bad config file itself
    return names


VLMEVAL_MODULES = ("vlmeval", "vlmeval.run")  # `python -m vlmeval` runs run.main() too


def vlmeval_cli_args(argv: list[str] | None = None) -> list[str] | None:
    """The arguments of a VLMEvalKit run (``python [-u] -m vlmeval.run ...``, or run.py as a script, which
    torchrun starts), else None. The hook runs while runpy imports the ``vlmeval`` package, before ``sys.argv``
    names run.py: the interpreter's own command line (``sys.orig_argv``) tells."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 2:] if argv[i + 1:i + 2] and argv[i + 1] in VLMEVAL_MODULES else None
        if arg == "-c":
            return None
        if not arg.startswith("-"):  # the script: what follows are its arguments
            return argv[i + 1:] if Path(arg).match("vlmeval/run.py") else None
        i += 2 if arg in ("-W", "-X") else 1  # the interpreter options that take a value
    return None


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
    """Let our wrappers know the output folder and sample index, after checking the folder holds no other variant's
    results (see records.py)."""
    import vlmeval.inference
    import vlmeval.inference_mt
    import vlmeval.inference_video

    from .records import checking_variant
    from .records import track_inference as tracked

    for module in (vlmeval.inference, vlmeval.inference_video):
        module.infer_data = tracked(module.infer_data)
    for module, job in ((vlmeval.inference, "infer_data_job"), (vlmeval.inference_video, "infer_data_job_video"),
                        (vlmeval.inference_mt, "infer_data_job_mt")):
        setattr(module, job, checking_variant(getattr(module, job)))
        # vlmeval/run.py binds the jobs by name when it is imported, which is after this hook ran (its import of
        # vlmeval.config comes first) unless something imported it before
        run = sys.modules.get("vlmeval.run")
        if run is not None and hasattr(run, job):
            setattr(run, job, getattr(module, job))


def register() -> list[str]:
    """Everything, idempotent. Returns the registered model names."""
    if os.environ.get(SIMULATE_BROKEN_ENV):
        raise RuntimeError(f"registration made to fail by {SIMULATE_BROKEN_ENV} (test switch)")
    if _still_importing("wrappers", "WRAPPERS"):
        _deferred.append("all")  # wrappers.py's last line registers, once WRAPPERS exists
        return []
    import vlmeval.vlm

    from .wrappers import WRAPPERS

    for cls in WRAPPERS.values():  # so --config JSON can name them as "class"
        setattr(vlmeval.vlm, cls.__name__, cls)
    cli_args = vlmeval_cli_args()
    try:
        specs = expand()
    except ValueError as err:  # a malformed TCC_EXTRA_MODELS: no name of ours can be registered
        if cli_args is not None and any(has_our_suffix(name) for name in requested_models(cli_args)):
            raise BadModelName(f"tcc-eval: {err}") from None  # else VLMEvalKit logs a KeyError per dataset, exit 0
        raise
    names = register_models(specs.values())
    if cli_args is not None:  # `python -m vlmeval.run --model Qwen2VL_TCC10`: names outside the matrix too
        names += register_names(requested_models(cli_args))
    if _still_importing("datasets", "VIDEO_PRESETS"):
        _deferred.append("datasets")  # datasets.py calls finish_deferred_registration() once complete
    else:
        register_datasets()
        fix_video_dataset_kwargs()
    track_inference()
    return names


_deferred: list[str] = []


def _still_importing(module: str, defines: str) -> bool:
    """True while our ``module`` (datasets.py, wrappers.py) is itself being imported and has not yet defined
    ``defines``, what registration reads from it: the module's own ``vlmeval`` imports load ``vlmeval.config``,
    which fires the start-up hook from inside them. The module's last line finishes the registration."""
    loaded = sys.modules.get(f"{__package__}.{module}")
    return loaded is not None and not hasattr(loaded, defines)


def finish_deferred_registration() -> None:
    """Finish what register() left to the module whose import fired it (see register())."""
    if "all" in _deferred:
        _deferred.clear()
        from .autoregister import register_quietly

        register_quietly()  # as the start-up hook would have: a failure is one line on stderr
    elif _deferred:
        _deferred.clear()
        register_datasets()
        fix_video_dataset_kwargs()
