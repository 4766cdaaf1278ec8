"""A small, seeded multi-label detection benchmark that ships as code.

Each image holds 1-4 objects from K shape-defined classes (circle, square, triangle,
cross, ring, star, ...), drawn in random colours, sizes (small to large, log-uniform)
and rotations on a cluttered background (smooth gradients, low-contrast textures,
random lines, curves and soft blobs as distractors). A class is defined by shape only:
colour carries no information.

Outputs (``generate_dataset``), all paths relative to the output folder:

- ``train/NNNNNN.png``, ``test/NNNNNN.png``: the images (sizes vary around ``image_size``);
- ``train.txt``, ``test.txt``: datalists in the HumanAttData format (SPEC section 2) with
  ``bbox_num`` scored proposals per image in the ``frame_width x frame_height`` frame;
- ``gt_train.json``, ``gt_test.json``: ground truth for CorLoc / detection AP::

      {"classes": [...], "frame": {"width": W, "height": H}, "split": "train",
       "images": [{"path": "train/000000.png", "width": w, "height": h,
                   "labels": [0/1 x K],
                   "objects": [{"class": k, "box": [x1, y1, x2, y2],        # frame, inclusive
                                "box_image": [x1, y1, x2, y2]}]}]}          # original image

- ``classes.txt`` (one name per line) and ``synthetic.json`` (the configuration).

Proposals imitate a real proposal method without using labels beyond what such a method
would find: bounding boxes of image contours (Canny at two thresholds) and of merged
neighbouring contours (what a grouping method finds), jittered copies of the object
boxes (each object is missed with probability ``proposal_miss``, as a method with finite
recall would), and random boxes. Every candidate gets an objectness score from the image
alone (gradient energy on the box's inner border versus just outside it, as Edge Boxes
rewards closed contours), and the top ``bbox_num`` by score are kept (padding as in
:mod:`mlic.data.proposals`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from mlic.data.datalist import format_line
from mlic.data.proposals import map_boxes_to_frame, select_proposals
from mlic.data.workers import OrderedProcessMap, clean_context

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "hollow_square", "crescent",
          "arrow", "t_shape", "hexagon", "l_shape")

_SPLITS = {"train": 0, "test": 1}


@dataclass
class SyntheticConfig:
    num_classes: int = 10
    image_size: int = 128
    frame_width: Optional[int] = None  # datalist frame (new_width); default image_size
    frame_height: Optional[int] = None
    num_train: int = 300
    num_test: int = 100
    bbox_num: int = 50
    min_objects: int = 1
    max_objects: int = 4
    min_object_frac: float = 0.08  # object size (longer side) relative to image_size
    max_object_frac: float = 0.45
    size_jitter: float = 0.15  # image width/height vary by this fraction around image_size
    num_distractors: Tuple[int, int] = (3, 8)
    proposal_miss: float = 0.1
    # Co-occurrence: with scene_groups > 0 the classes are dealt round-robin into that many
    # scenes; an image draws one scene and each object comes from it with probability
    # scene_affinity (else from any class), so labels are correlated as in real photos.
    scene_groups: int = 0
    scene_affinity: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.frame_width is None:
            self.frame_width = self.image_size
        if self.frame_height is None:
            self.frame_height = self.image_size
        self.num_distractors = tuple(self.num_distractors)
        if not 1 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {self.num_classes}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_object_frac <= self.max_object_frac <= 0.9:
            raise ValueError("need 0 < min_object_frac <= max_object_frac <= 0.9")
        if self.bbox_num < 1 or self.num_train < 0 or self.num_test < 0:
            raise ValueError("bbox_num must be >= 1 and image counts >= 0")
        if not 0 <= self.size_jitter < 0.5 or not 0 <= self.proposal_miss <= 1:
            raise ValueError("size_jitter must be in [0, 0.5) and proposal_miss in [0, 1]")
        if not 0 <= self.scene_groups <= self.num_classes or not 0 <= self.scene_affinity <= 1:
            raise ValueError(f"need 0 <= scene_groups <= num_classes and scene_affinity in [0, 1], got "
                             f"{self.scene_groups}, {self.scene_affinity}")

    @property
    def class_names(self) -> List[str]:
        return list(SHAPES[: self.num_classes])

    def scenes(self) -> List[List[int]]:
        """The class indices of each scene (empty when classes are independent)."""
        g = self.scene_groups
        return [list(range(i, self.num_classes, g)) for i in range(g)] if g else []


# --------------------------------------------------------------------------------------
# Shapes (polygons in a unit square centred at 0, before rotation)


def _regular(n, r=1.0, phase=0.0):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _shape_polys(name: str, rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(filled polygons, holes) in unit coordinates [-1, 1]."""
    if name == "circle":
        return [_regular(48)], []
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85], []
    if name == "triangle":
        return [_regular(3, 1.0, -np.pi / 2)], []
    if name == "cross":
        t = 0.3
        return [np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t],
                          [-1, t], [-1, -t], [-t, -t]], float)], []
    if name == "ring":
        return [_regular(48)], [_regular(48, 0.55)]
    if name == "star":
        outer = _regular(5, 1.0, -np.pi / 2)
        inner = _regular(5, 0.42, -np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)], []
    if name == "hollow_square":
        sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85
        return [sq], [sq * 0.55]
    if name == "crescent":
        return [_regular(48)], [_regular(48, 0.85) + np.array([0.45, -0.1])]
    if name == "arrow":
        return [np.array([[-1, -0.28], [0.15, -0.28], [0.15, -0.75], [1, 0], [0.15, 0.75], [0.15, 0.28],
                          [-1, 0.28]], float)], []
    if name == "t_shape":
        return [np.array([[-1, -1], [1, -1], [1, -0.55], [0.25, -0.55], [0.25, 1], [-0.25, 1], [-0.25, -0.55],
                          [-1, -0.55]], float)], []
    if name == "hexagon":
        return [_regular(6)], []
    if name == "l_shape":
        return [np.array([[-0.8, -1], [-0.25, -1], [-0.25, 0.5], [0.8, 0.5], [0.8, 1], [-0.8, 1]], float)], []
    raise ValueError(f"unknown shape {name!r}")


def _render_mask(name: str, size: float, angle: float, aspect: float, canvas: Tuple[int, int],
                 center: Tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased uint8 mask (0..255) of the shape on a canvas (h, w)."""
    polys, holes = _shape_polys(name, rng)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    scale = np.array([aspect, 1.0 / aspect]) * size / 2.0

    def tf(p):
        q = (p * scale) @ rot.T + np.asarray(center)
        return np.round(q * 16).astype(np.int32)  # 4 fractional bits for sub-pixel drawing

    mask = np.zeros(canvas, np.uint8)
    cv2.fillPoly(mask, [tf(p) for p in polys], 255, cv2.LINE_AA, shift=4)
    if holes:
        cv2.fillPoly(mask, [tf(p) for p in holes], 0, cv2.LINE_AA, shift=4)
    return mask


# --------------------------------------------------------------------------------------
# Background and clutter


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = ((xx * math.cos(a) + yy * math.sin(a)) / max(h, w) + 1) / 2
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # low-frequency noise
    small = rng.normal(0, 1, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(5, 20)
    # a low-contrast texture: stripes or checks
    kind = rng.integers(3)
    period = rng.uniform(4, 14)
    if kind == 0:
        b = rng.uniform(0, np.pi)
        tex = np.sin((xx * math.cos(b) + yy * math.sin(b)) * 2 * np.pi / period)
    elif kind == 1:
        tex = np.sign(np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period))
    else:
        tex = np.zeros_like(xx)
    img += tex[..., None] * rng.uniform(3, 12)
    img += rng.normal(0, rng.uniform(2, 6), img.shape).astype(np.float32)
    return img


def _distractors(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    h, w = img.shape[:2]
    for _ in range(count):
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        if kind == 0:  # straight line
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, col, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:  # open curve
            n = int(rng.integers(4, 8))
            start = rng.uniform([0, 0], [w, h])
            steps = rng.normal(0, max(h, w) / 10, (n, 2)).cumsum(0)
            pts = np.round((start + steps) * 16).astype(np.int32)
            cv2.polylines(img, [pts], False, col, int(rng.integers(1, 3)), cv2.LINE_AA, shift=4)
        else:  # soft blob (no sharp contour)
            blob = np.zeros((h, w), np.float32)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            ax, ay = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.25) * h
            cv2.ellipse(blob, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            k = int(max(ax, ay)) | 1
            blob = cv2.GaussianBlur(blob, (k, k), 0) * rng.uniform(0.3, 0.7)
            img[:] = img * (1 - blob[..., None]) + np.asarray(col, np.float32) * blob[..., None]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / ua if ua > 0 else 0.0


def render_image(cfg: SyntheticConfig, rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict]]:
    """One image (uint8 BGR) and its objects [{"class", "box_image" (inclusive xyxy)}]."""
    s = cfg.image_size
    w = int(round(s * rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter)))
    h = int(round(s * rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter)))
    img = _background(rng, h, w)
    lo, hi = cfg.num_distractors
    n_before = int(rng.integers(lo, hi + 1))
    _distractors(rng, img, n_before // 2 + n_before % 2)
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    scenes = cfg.scenes()
    scene = scenes[int(rng.integers(len(scenes)))] if scenes else None
    objects: List[Dict] = []
    tries = 0
    while len(objects) < n_obj and tries < 60:
        tries += 1
        if scene is not None and rng.random() < cfg.scene_affinity:
            k = scene[int(rng.integers(len(scene)))]
        else:
            k = int(rng.integers(cfg.num_classes))
        size = s * math.exp(rng.uniform(math.log(cfg.min_object_frac), math.log(cfg.max_object_frac)))
        aspect = math.exp(rng.uniform(-0.2, 0.2))
        half = size / 2 * 1.1
        if 2 * half >= min(w, h) - 2:
            continue
        cx, cy = rng.uniform(half, w - half), rng.uniform(half, h - half)
        mask = _render_mask(SHAPES[k], size, rng.uniform(0, 2 * np.pi), aspect, (h, w), (cx, cy), rng)
        ys, xs = np.nonzero(mask > 127)
        if len(xs) < 6:
            continue
        box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        if any(_iou(box, o["box_image"]) > 0.2 for o in objects):
            continue
        # a colour that differs from what lies under the object
        under = img[ys, xs].mean(0)
        for _ in range(10):
            col = rng.uniform(0, 255, 3)
            if np.abs(col - under).sum() > 150:
                break
        shade = 1 + rng.uniform(-0.15, 0.15) * (np.linspace(-1, 1, w)[None, :, None])
        a = (mask.astype(np.float32) / 255.0)[..., None]
        img[:] = img * (1 - a) + (col[None, None, :] * shade) * a
        objects.append({"class": k, "box_image": box})
    _distractors(rng, img, n_before // 2)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------------------
# Proposals


def _grad_integral(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    return cv2.integral(mag, sdepth=cv2.CV_64F)


def _box_sum(ii: np.ndarray, x1, y1, x2, y2) -> np.ndarray:
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    x1 = np.clip(np.floor(x1).astype(int), 0, w)
    x2 = np.clip(np.floor(x2).astype(int) + 1, 0, w)
    y1 = np.clip(np.floor(y1).astype(int), 0, h)
    y2 = np.clip(np.floor(y2).astype(int) + 1, 0, h)
    x2, y2 = np.maximum(x2, x1), np.maximum(y2, y1)
    return ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1], (x2 - x1) * (y2 - y1)


def objectness(img: np.ndarray, boxes: np.ndarray, ii: Optional[np.ndarray] = None) -> np.ndarray:
    """Score in [0.001, 0.999] per box from the image's gradients: energy on the inner border band
    versus the band just outside (closed contours that fit the box score high)."""
    ii = _grad_integral(img) if ii is None else ii
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    m = np.maximum(1.0, 0.15 * np.minimum(bw, bh))
    # the band around the box border is 1 px wider outside: a gradient filter answers on
    # both sides of an edge, and a tight box's own edge must not count as "outside"
    s_full, a_full = _box_sum(ii, b[:, 0] - 1, b[:, 1] - 1, b[:, 2] + 1, b[:, 3] + 1)
    s_in, a_in = _box_sum(ii, b[:, 0] + m, b[:, 1] + m, b[:, 2] - m, b[:, 3] - m)
    s_out, a_out = _box_sum(ii, b[:, 0] - 1 - m, b[:, 1] - 1 - m, b[:, 2] + 1 + m, b[:, 3] + 1 + m)
    border = (s_full - s_in) / np.maximum(a_full - a_in, 1)
    ring = (s_out - s_full) / np.maximum(a_out - a_full, 1)
    mean = ii[-1, -1] / max(1, (ii.shape[0] - 1) * (ii.shape[1] - 1))
    z = 2.0 * (border - 1.3 * ring) / (mean + 1e-6) - 1.0
    # kept inside [0.001, 0.999] so that no proposal's RoI features are scaled to 0
    return np.clip(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), 0.001, 0.999)


def propose(img: np.ndarray, objects: List[Dict], rng: np.random.Generator, num: int,
            miss: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Candidate boxes (image frame, inclusive xyxy) and their objectness, about 2*num of them."""
    h, w = img.shape[:2]
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    cands: List[List[float]] = []
    for lo, hi in ((40, 120), (80, 200)):
        edges = cv2.Canny(cv2.GaussianBlur(gray, (3, 3), 0), lo, hi)
        contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            if bw * bh >= 16:
                cands.append([x, y, x + bw - 1, y + bh - 1])
    if len(cands) > num:
        keep = rng.choice(len(cands), num, replace=False)
        cands = [cands[i] for i in keep]
    # merged neighbours (grouping)
    merged = []
    for _ in range(min(len(cands), num // 4)):
        i, j = rng.choice(len(cands), 2, replace=len(cands) < 2)
        a, b = cands[i], cands[j]
        merged.append([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
    cands += merged
    # objects found by the method (finite recall), with localisation noise
    for o in objects:
        if rng.random() < miss:
            continue
        x1, y1, x2, y2 = o["box_image"]
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        for _ in range(3):
            d = rng.normal(0, 0.1, 4) * np.array([bw, bh, bw, bh])
            cands.append([x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]])
    # random boxes to fill up
    while len(cands) < 2 * num:
        bw = w * math.exp(rng.uniform(math.log(0.08), 0))
        bh = min(h, max(4.0, bw * math.exp(rng.uniform(-0.7, 0.7)) * h / w))
        bw = min(bw, w)
        x1, y1 = rng.uniform(0, w - bw + 1e-9), rng.uniform(0, h - bh + 1e-9)
        cands.append([x1, y1, x1 + bw - 1, y1 + bh - 1])
    boxes = np.asarray(cands, np.float64)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return boxes, objectness(img, boxes)


# --------------------------------------------------------------------------------------
# Dataset


@dataclass
class SyntheticSample:
    path: str
    image: np.ndarray
    labels: np.ndarray  # uint8 [K]
    objects: List[Dict]  # class, box_image, box (frame)
    proposals: np.ndarray  # float64 [B, 5] in the frame


def make_sample(cfg: SyntheticConfig, split: str, index: int) -> SyntheticSample:
    """Image ``index`` of ``split``: a pure function of (cfg, split, index)."""
    rng = np.random.default_rng([cfg.seed, _SPLITS[split], index])
    img, objects = render_image(cfg, rng)
    h, w = img.shape[:2]
    fw, fh = cfg.frame_width, cfg.frame_height
    boxes, scores = propose(img, objects, rng, cfg.bbox_num, cfg.proposal_miss)
    frame_boxes = map_boxes_to_frame(boxes, w, h, fw, fh)
    props = select_proposals(frame_boxes, scores, cfg.bbox_num, fw, fh)
    labels = np.zeros(cfg.num_classes, np.uint8)
    for o in objects:
        labels[o["class"]] = 1
        o["box"] = [round(float(v), 2) for v in map_boxes_to_frame(np.array(o["box_image"]), w, h, fw, fh)[0]]
    return SyntheticSample(f"{split}/{index:06d}.png", img, labels, objects, props)


def generate_dataset(out_dir: str, cfg: Optional[SyntheticConfig] = None, workers: int = 0) -> Dict[str, str]:
    """Write the benchmark to ``out_dir`` (see the module docstring). Returns the file paths.

    ``workers`` > 0 renders with that many processes (same output as 0).
    """
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
        (out / split).mkdir(exist_ok=True)
        jobs = [(cfg, split, i, str(out)) for i in range(n)]
        if workers > 0 and n > 0:
            with OrderedProcessMap(_write_sample, workers, clean_context([__name__]), in_flight=8) as pool:
                results = list(pool.imap(jobs))
        else:
            results = [_write_sample(j) for j in jobs]
        lines = [r[0] for r in results]
        gt_images = [r[1] for r in results]
        (out / f"{split}.txt").write_text("".join(ln + "\n" for ln in lines))
        gt = {"classes": cfg.class_names, "frame": {"width": cfg.frame_width, "height": cfg.frame_height},
              "split": split, "images": gt_images}
        (out / f"gt_{split}.json").write_text(json.dumps(gt, indent=None, separators=(",", ":")) + "\n")
        files[split] = str(out / f"{split}.txt")
        files[f"gt_{split}"] = str(out / f"gt_{split}.json")
    (out / "classes.txt").write_text("".join(c + "\n" for c in cfg.class_names))
    (out / "synthetic.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    files["classes"] = str(out / "classes.txt")
    files["root_folder"] = str(out) + os.sep
    return files


def _write_sample(job):
    cfg, split, i, out = job
    smp = make_sample(cfg, split, i)
    if not cv2.imwrite(os.path.join(out, smp.path), smp.image):
        raise OSError(f"cannot write {os.path.join(out, smp.path)}")
    h, w = smp.image.shape[:2]
    gt = {"path": smp.path, "width": w, "height": h, "labels": smp.labels.tolist(),
          "objects": [{"class": o["class"], "box": o["box"], "box_image": o["box_image"]} for o in smp.objects]}
    return format_line(smp.path, smp.labels, smp.proposals), gt
