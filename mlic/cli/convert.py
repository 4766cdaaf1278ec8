"""tools/convert_caffemodel.py: mlic.caffe.convert's conversion from the command line."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from mlic.caffe.convert import convert
from mlic.caffe.errors import CaffeError


def _floats(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert weights: any weight file of the project (caffemodel, .pt param dict, tools/train.py "
                    "checkpoint, student export, torchvision:vgg16) to a caffemodel for a prototxt, a param dict, "
                    "or a student-only export.")
    ap.add_argument("src", help="input weights: .caffemodel (current or V1), .pt/.pth (param dict, checkpoint, "
                                "student export, state dict), torchvision:vgg16 or torchvision:PATH")
    ap.add_argument("dst", help="output .caffemodel (needs --prototxt) or .pt/.pth")
    ap.add_argument("--prototxt", help="network definition: the layers to write (loaded by name, shape-checked); "
                                       "with --student, where the student's sizes come from when SRC has none")
    ap.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"], help="phase of --prototxt's net")
    ap.add_argument("--strict", action="store_true", help="fail when a layer of the net is not in SRC")
    ap.add_argument("--student", action="store_true",
                    help="write a student-only export (weights without the teacher, class names, input settings)")
    ap.add_argument("--class-names", help="with --student: text file, one class name per line")
    ap.add_argument("--allow-untrained-teacher", action="store_true",
                    help="write a KD net whose teacher layers SRC does not have (otherwise an error)")
    ap.add_argument("--mean", type=_floats, help="for torchvision weights: B,G,R mean the net subtracts "
                                                 "(default: --prototxt's data layer)")
    ap.add_argument("--scale", type=float, help="for torchvision weights: the net's input scale (default 1)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    warnings = _Warnings()  # the library's warnings (an unverified input file), as this tool's own
    logging.getLogger("mlic").addHandler(warnings)
    try:
        convert(args.src, args.dst, args.prototxt, args.phase, strict=args.strict, student=args.student,
                class_names=args.class_names, allow_untrained_teacher=args.allow_untrained_teacher,
                mean=args.mean, scale=args.scale,
                warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except (CaffeError, ValueError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"convert_caffemodel.py: error: {_sentence(exc)}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger("mlic").removeHandler(warnings)
    return 0


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
