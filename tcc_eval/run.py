"""``python -m tcc_eval.run ARGS`` = ``python -m vlmeval.run ARGS`` with tcc-eval registered explicitly.

Works without the .pth start-up hook (e.g. when the package is only on PYTHONPATH, or with
TCC_EVAL_NO_AUTOREGISTER=1), and also accepts model names outside the matrix that parse as
``<Base>_<Method><ratio>`` (e.g. ``Qwen2VL_TCC10``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from tcc_eval.integrations.vlmeval.register import register, register_names, requested_models

    try:
        register()
        register_names(requested_models(argv))
    except ValueError as err:  # a malformed TCC_EXTRA_MODELS or model name: the reason, not a traceback
        raise SystemExit(f"tcc-eval: {err}") from None
    import vlmeval
    import vlmeval.run

    sys.argv = ["vlmeval.run", *argv]
    vlmeval.load_env()
    vlmeval.run.main()


if __name__ == "__main__":
    main()
