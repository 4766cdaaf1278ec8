#!/usr/bin/env python
"""Compare the project's nets against recorded Caffe outputs:

    tools/compare_caffe.py CASE.npz [CASE.npz ...] [--prototxt P] [--caffemodel M] [--phase TRAIN|TEST]

Prints per blob the max absolute and relative difference and the first key out of
tolerance; exit status 0 when every compared key is within tolerance.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlic.cli.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
