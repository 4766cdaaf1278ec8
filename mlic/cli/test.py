"""tools/test.py: its flags as an EvalConfig for mlic.training.evaluate()."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from mlic.cli.common import run_tool
from mlic.data.annotations import GT_FORMAT_HELP
from mlic.training.config import EvalConfig
from mlic.training.test import evaluate


def add_test_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--weights", help="final.pt or a checkpoint written by tools/train.py, or a student export "
                   "(tools/convert_caffemodel.py RUN/final.pt student.pt --student) (required)")
    p.add_argument("--datalist", help="test datalist (image labels... x1 y1 x2 y2 s ...; required)")
    p.add_argument("--root-folder", default="", help="prefix of the image paths (Caffe's root_folder)")
    p.add_argument("--out", help="folder for scores.csv, metrics.json and figures")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward")
    p.add_argument("--multiscale", action="store_true",
                   help="teacher: fuse the 5 training scales and their mirrors (default: one forward at 672)")
    p.add_argument("--gt", help="ground-truth boxes for CorLoc and detection AP: " + GT_FORMAT_HELP)
    p.add_argument("--class-names", help="text file, one class name per line")
    p.add_argument("--figures", action="store_true", help="write precision-recall curves")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return p


def config_from_args(args) -> EvalConfig:
    return EvalConfig(weights=args.weights, datalist=args.datalist, root_folder=args.root_folder, out=args.out,
                      batch_size=args.batch_size, multiscale=args.multiscale, gt=args.gt,
                      class_names=args.class_names, figures=args.figures, device=args.device,
                      progress=not args.quiet)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """tools/test.py: 0 on success, 2 for bad input (one sentence on stderr)."""
    args = add_test_arguments(argparse.ArgumentParser(description="Test a trained stage.")).parse_args(argv)
    return run_tool("test.py", lambda: evaluate(config_from_args(args)), debug=args.debug)
