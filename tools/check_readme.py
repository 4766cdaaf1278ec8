#!/usr/bin/env python
"""Run the README's commands as written; --help says which (mlic/cli/check_readme.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlic.cli.check_readme import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
