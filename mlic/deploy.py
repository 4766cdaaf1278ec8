"""Predictions of the deployable student on image files (tools/predict.py).

The student comes from a student export or any weight file holding one
(mlic.caffe.student_export). Images go through the data layer's test-time pipeline:
OpenCV BGR read, INTER_LINEAR resize to the input size, ``(pixel - mean) * scale``; the
student resizes to its own size inside the network, as in the released nets.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch

from mlic.caffe.student_export import StudentInfo
from mlic.data.human_att_data import pixels_to_data
from mlic.data.transforms import read_image_bgr, resize_linear
from mlic.errors import UserInputError
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
