"""tools/predict.py: mlic.deploy's predictions of the student on image files."""
from __future__ import annotations

import argparse
import os

from mlic.caffe.student_export import load_student
from mlic.cli.common import run_tool
from mlic.deploy import draw, predict, top_k
from mlic.errors import UserInputError


def main(argv=None) -> int:
    """tools/predict.py: 0 on success, 2 for bad input (one sentence on stderr)."""
    ap = argparse.ArgumentParser(description="Top-k labels of the trained student on image files.")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything OpenCV reads)")
    ap.add_argument("--model", required=True,
                    help="a student export (tools/convert_caffemodel.py RUN/final.pt OUT.pt --student), or a weight "
                         "file holding a student (a --stage student/stage2 final.pt, ...)")
    ap.add_argument("--prototxt", help="the net the weights were trained with, where --model does not say the "
                                       "student's sizes (a caffemodel)")
    ap.add_argument("--top-k", type=int, default=5, help="labels shown per image (default 5)")
    ap.add_argument("--picture", help="write the image with its labels: a file for one image, a folder (created) "
                                      "for several (IMAGE's name, .png)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    return run_tool("predict.py", lambda: _predict_tool(args), debug=args.debug)


def _predict_tool(args) -> None:
    if args.top_k < 1 or args.batch_size < 1:
        raise UserInputError(f"--top-k and --batch-size must be at least 1, got {args.top_k} and {args.batch_size}")
    model, info = load_student(args.model, args.device, prototxt=args.prototxt)
    probs = predict(model, info, args.images, args.batch_size)
    labels = top_k(probs, min(args.top_k, probs.shape[1]), info)
    for path, row in zip(args.images, labels):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in row))
    if args.picture:
        outs = [args.picture]
        if len(args.images) > 1:
            os.makedirs(args.picture, exist_ok=True)
            outs = [os.path.join(args.picture, os.path.splitext(os.path.basename(p))[0] + ".png")
                    for p in args.images]
        for path, row, out in zip(args.images, labels, outs):
            draw(path, row, out)
        print(f"picture{'s' if len(outs) > 1 else ''} written to {args.picture}")
