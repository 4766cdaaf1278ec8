#!/usr/bin/env python
"""Write a HumanAttData datalist (labels + scored proposals) for COCO 2014 or NUS-WIDE;
--help gives the examples and the flags (mlic/cli/make_datalist.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlic.cli.make_datalist import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
