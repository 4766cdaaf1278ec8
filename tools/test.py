#!/usr/bin/env python
"""Test a trained teacher or student: per-image scores, mAP / CP / CR / CF1 / OP / OR / OF1
(all labels and top-3), per-class AP; CorLoc and detection AP for the teacher with --gt.

  python tools/test.py --weights runs/teacher/final.pt --datalist test.txt --multiscale --out runs/teacher/test
"""
import sys

from mlic.cli.test import main

if __name__ == "__main__":
    from mlic.portable import restart_if_requested

    restart_if_requested()
    sys.exit(main())
