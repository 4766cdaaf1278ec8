#!/usr/bin/env python
"""Does distillation help? Runs the paper-vs-code switches against the student without
KD over seeds and writes a table and a plot (see mlic/study).

  python tools/study.py --preset demo --seeds 0-4 --out study_out
"""
import sys

from mlic.cli.study import main

if __name__ == "__main__":
    from mlic.portable import restart_if_requested

    restart_if_requested()
    sys.exit(main())
