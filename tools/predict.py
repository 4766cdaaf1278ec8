#!/usr/bin/env python
"""Top-k labels of the trained student on images (no teacher needed):

    tools/predict.py photo.jpg [more.jpg ...] --model student.pt [--top-k 5] [--picture out.png]

--model: a student export (tools/convert_caffemodel.py RUN/final.pt student.pt --student)
or a weight file holding a student (a --stage student/stage2 final.pt).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlic.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
