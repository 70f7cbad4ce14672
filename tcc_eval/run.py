"""``python -m tcc_eval.run ARGS`` = ``python -m vlmeval.run ARGS`` with tcc-eval registered explicitly.

Works without the .pth start-up hook (e.g. when the package is only on PYTHONPATH, or with
TCC_EVAL_NO_AUTOREGISTER=1), and also accepts model names outside the matrix that parse as
``<Base>_<Method><ratio>`` (e.g. ``Qwen2VL_TCC10``).
"""

from __future__ import annotations

import json
import sys


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
    """Model names of a vlmeval.run command line: ``--model`` values and the ``--config`` JSON's models."""
    names = _values(argv, "--model")
    for config in _values(argv, "--config")[:1]:
        try:
            with open(config, encoding="utf-8") as f:
                names += list(json.load(f).get("model", {}))
        except (OSError, ValueError, AttributeError):
            pass  # vlmeval.run reports a bad config file itself
    return names


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from tcc_eval.integrations.vlmeval.register import register, register_names

    register()
    register_names(requested_models(argv))
    import vlmeval
    import vlmeval.run

    sys.argv = ["vlmeval.run", *argv]
    vlmeval.load_env()
    vlmeval.run.main()


if __name__ == "__main__":
    main()
