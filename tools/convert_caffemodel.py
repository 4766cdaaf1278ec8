#!/usr/bin/env python
"""Convert weights between Caffe caffemodels and parameter dicts ({'layer/i': tensor}, torch.save):

    tools/convert_caffemodel.py IN.caffemodel OUT.pt [--prototxt NET.prototxt]
    tools/convert_caffemodel.py IN.pt OUT.caffemodel --prototxt NET.prototxt
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlic.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
