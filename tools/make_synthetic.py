#!/usr/bin/env python
"""Generate the embedded synthetic multi-label detection benchmark (see mlic/data/synthetic.py);
--help gives the flags (mlic/cli/make_synthetic.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlic.cli.make_synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
