"""``python -m tcc_eval.integrations.lmms_eval OUTPUT_PATH [--tasks a,b] [--newer-than EPOCH]``: exit 1
unless lmms-eval wrote a matching ``*_results.json`` (see ``results.check_results``)."""

import sys

from .results import main

sys.exit(main())
