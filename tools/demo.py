#!/usr/bin/env python
"""The embedded demo: synthetic benchmark -> teacher -> KD stages -> student baseline ->
tests -> results table and figures (see mlic/demo.py). --kernels checks only the ops."""
import sys

from mlic.cli.demo import main

if __name__ == "__main__":
    from mlic.portable import restart_if_requested

    restart_if_requested()
    sys.exit(main())
