"""Predictions of the deployable student on image files (tools/predict.py).

The student comes from a student export or any weight file holding one
(mlic.caffe.student_export). Images go through the data layer's test-time pipeline:
OpenCV BGR read, INTER_LINEAR resize to the input size, ``(pixel - mean) * scale``; the
student resizes to its own size inside the network, as in the released nets.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch

from mlic.caffe.student_export import StudentInfo, load_student
from mlic.data.human_att_data import pixels_to_data
from mlic.data.transforms import read_image_bgr, resize_linear
from mlic.errors import UserInputError
from mlic.training.cli import run_tool
from prototxt_ports import Student


def load_images(paths: Sequence[str], info: StudentInfo) -> torch.Tensor:
    """The data blob [N, 3, H, W] for image files, as the test-time data layer makes it."""
    h, w = info.size
    pixels = []
    for p in paths:
        img = read_image_bgr(str(p))
        if img is None:
            what = "no such file" if not os.path.exists(p) else "not an image OpenCV can read"
            raise UserInputError(f"{p}: {what}")
        pixels.append(resize_linear(img, w, h))
    return pixels_to_data(torch.from_numpy(np.stack(pixels)), info.mean_bgr, info.scale)


@torch.no_grad()
def predict(model: Student, info: StudentInfo, paths: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """Class probabilities [N, C] for image files."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(paths), batch_size):
        data = load_images(paths[s:s + batch_size], info).to(device)
        out.append(model.predict(data).float().cpu())
    return torch.cat(out).numpy()


def top_k(probs: np.ndarray, k: int, info: StudentInfo) -> List[List[Tuple[str, float]]]:
    """Per image the k most probable classes (stable order for equal probabilities)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(info.name(int(c)), float(probs[i, c])) for c in row] for i, row in enumerate(order)]


def draw(image_path: str, labels: Sequence[Tuple[str, float]], out_path, width: int = 480) -> None:
    """The image with its predicted labels and probabilities written below it."""
    img = read_image_bgr(str(image_path))
    scale = width / img.shape[1]
    img = cv2.resize(img, (width, max(1, int(round(img.shape[0] * scale)))), interpolation=cv2.INTER_AREA)
    line = 26
    panel = np.full((line * len(labels) + 12, width, 3), 255, np.uint8)
    for i, (name, p) in enumerate(labels):
        cv2.rectangle(panel, (8, 8 + i * line), (8 + int((width - 16) * p), 8 + i * line + line - 6),
                      (230, 200, 160), -1)
        cv2.putText(panel, f"{name}  {p:.3f}", (12, 8 + i * line + line - 11), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
    try:
        ok = cv2.imwrite(str(out_path), np.concatenate([img, panel], 0))
    except cv2.error:  # an extension OpenCV has no writer for
        ok = False
    if not ok:
        raise UserInputError(f"{out_path}: cannot write the picture (unknown image extension or unwritable folder)")


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
