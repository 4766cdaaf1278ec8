"""The image and box transforms of Caffe's HumanAttData layer (SPEC section 2).

All arithmetic that Caffe does in ``float`` is done in float32 here so that truncations
(``int(w * f)``, ``int(int(x) * f)``) land on the same integers.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

import cv2
import numpy as np

# A JPEG marker that starts a segment: 0xFF (and fill bytes) then a code other than a stuffed
# zero, TEM, RSTn or SOI, which stand alone. Entropy-coded data never holds one.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\x01\xd0-\xd8\xff])")


def jpeg_truncated(data: bytes) -> bool:
    """Whether JPEG data end before their end-of-image marker. libjpeg decodes such a file
    with only a warning ("Premature end of JPEG file"), the missing rows grey. Segments are
    skipped by their length, so an embedded thumbnail's marker does not count (a file cut
    right after one lacks its frame and does not decode at all)."""
    if data.endswith(b"\xff\xd9"):
        return False
    pos = 2
    while True:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            return True
        if m.group(1) == b"\xd9":
            return False
        pos = m.end()
        if pos + 2 > len(data):
            return True
        pos += int.from_bytes(data[pos:pos + 2], "big")


def read_image_bgr(path: str) -> Optional[np.ndarray]:
    """8-bit 3-channel BGR image as OpenCV's IMREAD_COLOR reads it, or None if unreadable
    (a truncated JPEG included, which OpenCV would return part grey)."""
    if not os.path.isfile(path):
        return None
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is not None:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\xff\xd8" and jpeg_truncated(data):
            return None
    return img


def resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv::resize`` to (width, height) with INTER_LINEAR (aspect ratio not kept)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize to {width}x{height}: both sizes must be positive")
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def is_unit_scale(factor: float) -> bool:
    """Caffe compares the float factor with 1 exactly."""
    return np.float32(factor) == np.float32(1.0)


def scaled_size(width: int, height: int, factor: float) -> Tuple[int, int]:
    """(int(w*f), int(h*f)) computed in float32 as Caffe does."""
    f = np.float32(factor)
    return int(np.float32(width) * f), int(np.float32(height) * f)


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """x = int(int(x) * f) on x1, y1, x2, y2 of boxes [..., 5]; the score is untouched.

    At f == 1 exactly the boxes are returned unchanged (still fractional), as in Caffe.
    """
    out = np.array(boxes, dtype=np.float32, copy=True)
    if is_unit_scale(factor):
        return out
    f = np.float32(factor)
    xy = out[..., :4]
    out[..., :4] = np.trunc(np.trunc(xy) * f)
    return out


def mirror_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Left-right flip of boxes [..., 5] in an image of the given width:
    x1' = W - int(x2) - 1, x2' = W - int(x1) - 1; y and score unchanged."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    w = np.float32(width)
    x1 = np.trunc(out[..., 0])
    x2 = np.trunc(out[..., 2])
    out[..., 0] = w - x2 - np.float32(1)
    out[..., 2] = w - x1 - np.float32(1)
    return out
