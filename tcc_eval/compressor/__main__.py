"""``python -m tcc_eval.compressor {label,train,evaluate}``: build a compressor for your own checkpoint."""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from ..options import DEBUG_ENV
from . import evaluate, labels, train

EPILOG = """\
typical run:
  python -m tcc_eval.compressor label --model MODEL --data train.tsv --out labels/
  python -m tcc_eval.compressor train --labels labels/ --out compressor.pt
  python -m tcc_eval.compressor evaluate --labels labels/ --compressor compressor.pt
  then tcc_eval.load(MODEL, method="tcc", keep_ratio=0.25, compressor="compressor.pt")
several GPUs: torchrun --nproc-per-node 8 -m tcc_eval.compressor label ... (one shard per process)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcc_eval.compressor", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in (("label", labels), ("train", train), ("evaluate", evaluate)):
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def cli() -> int:
    """The command line: bad input (its message names the problem and the fix) is one line, not a traceback."""
    try:
        return main()
    except (ValueError, OSError, pickle.UnpicklingError) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {err}  ({DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
