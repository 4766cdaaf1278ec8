"""Build HumanAttData datalists: image labels (COCO 2014, NUS-WIDE) + scored proposals.

Proposal policy (every source): boxes are taken in the original image's pixel frame
(inclusive corners), degenerate ones (x2 < x1 or y2 < y1) dropped, mapped into the
new_width x new_height frame by plain scaling ``x * new_width / width`` (and y likewise;
the data layer never rescales boxes, SPEC section 2) and clipped to the frame; then the
top-B by score are kept (a stable sort, so equal scores keep the source's order).
With fewer than B boxes the list is padded according to ``pad``:

- ``"repeat"`` (default): the kept boxes are repeated cyclically in score order, so the
  line holds only real proposals (duplicates pool identical features);
- ``"whole"``: whole-frame boxes with score 1;
- ``"zero"``: whole-frame boxes with score 0 (their score-scaled RoI features are 0).

An image with no proposal at all gets whole-frame boxes with score 1 (``"zero"``: 0).

Scores matter: the released nets' RoI pooling multiplies each proposal's pooled features by
its score (``score_scale * s + score_bias`` with 1 and 0), so a proposal's score scales
what the detector sees of it. Edge Boxes and precomputed files bring their own scores.
Selective search has none; it gets a score from its rank (``SS_SCORES``): ``"rank"`` (the
default) gives the proposal of 0-based rank r the score ``(B - r) / B`` for B =
``bbox_num`` (1, 1 - 1/B, ..., 1/B: features of later proposals are damped linearly, as a
ranked objectness score would), ``"one"`` gives every box 1 (all proposals weigh the same).

:func:`build_datalist` works through the images with several processes, can take one
contiguous shard of them (so that machines can split a data set and the shards' lists
concatenate into the whole list), and resumes an interrupted run: finished lines are kept in
``OUT.partial`` (with the settings in ``OUT.partial.json``) until the list is complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .workers import OrderedProcessMap, clean_context

PAD_CHOICES = ("repeat", "whole", "zero")


class DatasetFormatError(ValueError):
    """An annotation, image or proposal file cannot be used (missing or not of the expected layout)."""


STRUCTURED_EDGE_MODEL_URL = "https://github.com/opencv/opencv_extra/raw/master/testdata/cv/ximgproc/model.yml.gz"
SS_SCORES = ("rank", "one")


@dataclass
class MultiLabelSet:
    """Images with multi-hot labels: ``paths`` (as written in the datalist), ``labels``
    uint8 [n, C], ``class_names`` [C], optional ``sizes`` [(width, height)] and ``keys``
    (identifiers to look proposals up by; default: the paths)."""

    paths: List[str]
    labels: np.ndarray
    class_names: List[str]
    sizes: Optional[List[Tuple[int, int]]] = None
    keys: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------
# COCO 2014


def coco_multilabels(instances_json: str, image_prefix: str = "", drop_empty: bool = False,
                     include_crowd: bool = True) -> MultiLabelSet:
    """Labels of a COCO instances file (e.g. instances_train2014.json / instances_val2014.json).

    The C = 80 labels follow the category-id order; images are in image-id order and
    named ``image_prefix + file_name`` (e.g. prefix ``"train2014/"``). ``drop_empty``
    removes images without any annotation (kept by default, as the 82,783 / 40,504 split).
    """
    from pycocotools.coco import COCO

    if not os.path.isfile(instances_json):
        raise DatasetFormatError(f"COCO instances file not found: {instances_json}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(instances_json)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetFormatError(f"{instances_json}: not a COCO instances file ({exc!r})") from None
    if "categories" not in coco.dataset or "images" not in coco.dataset:
        raise DatasetFormatError(f"{instances_json}: missing 'categories' or 'images'")
    cat_ids = sorted(coco.getCatIds())
    col = {c: k for k, c in enumerate(cat_ids)}
    names = [coco.cats[c]["name"] for c in cat_ids]
    img_ids = sorted(coco.getImgIds())
    labels = np.zeros((len(img_ids), len(cat_ids)), np.uint8)
    for r, iid in enumerate(img_ids):
        for ann in coco.imgToAnns.get(iid, []):
            if not include_crowd and ann.get("iscrowd", 0):
                continue
            if ann["category_id"] not in col:
                raise DatasetFormatError(f"{instances_json}: annotation {ann.get('id')} has unknown "
                                         f"category_id {ann['category_id']}")
            labels[r, col[ann["category_id"]]] = 1
    keep = labels.any(axis=1) if drop_empty else np.ones(len(img_ids), bool)
    imgs = [coco.imgs[i] for i in img_ids]
    return MultiLabelSet(
        paths=[image_prefix + im["file_name"] for im, k in zip(imgs, keep) if k],
        labels=labels[keep], class_names=names,
        sizes=[(int(im["width"]), int(im["height"])) for im, k in zip(imgs, keep) if k],
        keys=[im["file_name"] for im, k in zip(imgs, keep) if k])


# --------------------------------------------------------------------------------------
# NUS-WIDE


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise DatasetFormatError(f"NUS-WIDE file not found: {path}")
    return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]


def _nus_rel(p: str) -> str:
    """'C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg' -> 'actor/0001_2124494179.jpg'."""
    parts = [s for s in p.replace("\\", "/").split("/") if s]
    return "/".join(parts[-2:])


def _read_01(path: Path, expect: int) -> np.ndarray:
    vals = _read_lines(path)
    if len(vals) != expect:
        raise DatasetFormatError(f"{path}: {len(vals)} label lines, expected {expect} (one per image)")
    out = np.zeros(expect, np.uint8)
    for k, v in enumerate(vals):
        if v not in ("0", "1"):
            raise DatasetFormatError(f"{path}:{k + 1}: label must be 0 or 1, got {v!r}")
        out[k] = v == "1"
    return out


def nuswide_multilabels(root: str, split: str = "train", image_prefix: str = "",
                        drop_empty: bool = True) -> MultiLabelSet:
    """NUS-WIDE's 81 concepts for ``split`` in {"train", "test", "all"}.

    Layout under ``root`` (the dataset's own files): ``Concepts81.txt`` (concept order; if
    absent, the sorted names of the label files), ``ImageList/Imagelist.txt`` and
    ``ImageList/{Train,Test}Imagelist.txt``, ``Groundtruth/AllLabels/Labels_<c>.txt`` (one
    0/1 per line of Imagelist.txt) and optionally
    ``Groundtruth/TrainTestLabels/Labels_<c>_{Train,Test}.txt``. Paths become
    ``image_prefix + '<folder>/<file>'``. ``drop_empty`` (the usual clean split) removes
    images with no concept.
    """
    rootp = Path(root)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    all_dir = rootp / "Groundtruth" / "AllLabels"
    tt_dir = rootp / "Groundtruth" / "TrainTestLabels"
    cfile = rootp / "Concepts81.txt"
    if cfile.is_file():
        concepts = _read_lines(cfile)
    elif all_dir.is_dir():
        concepts = sorted(p.name[len("Labels_"):-len(".txt")] for p in all_dir.glob("Labels_*.txt"))
    else:
        raise DatasetFormatError(f"NUS-WIDE: neither {cfile} nor {all_dir} exists")
    if not concepts:
        raise DatasetFormatError(f"NUS-WIDE under {root}: no concepts found")
    if split == "all":
        images = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / "Imagelist.txt")]
        cols = [_read_01(all_dir / f"Labels_{c}.txt", len(images)) for c in concepts]
    else:
        tag = "Train" if split == "train" else "Test"
        images = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / f"{tag}Imagelist.txt")]
        if all(((tt_dir / f"Labels_{c}_{tag}.txt").is_file() for c in concepts)):
            cols = [_read_01(tt_dir / f"Labels_{c}_{tag}.txt", len(images)) for c in concepts]
        else:
            every = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / "Imagelist.txt")]
            pos = {p: k for k, p in enumerate(every)}
            missing = [p for p in images if p not in pos]
            if missing:
                raise DatasetFormatError(f"NUS-WIDE: {len(missing)} {tag} images are not in Imagelist.txt "
                                         f"(first: {missing[0]})")
            rows = np.array([pos[p] for p in images], dtype=np.int64)
            cols = [_read_01(all_dir / f"Labels_{c}.txt", len(every))[rows] for c in concepts]
    labels = np.stack(cols, axis=1) if cols else np.zeros((len(images), 0), np.uint8)
    keep = labels.any(axis=1) if drop_empty else np.ones(len(images), bool)
    return MultiLabelSet(paths=[image_prefix + p for p, k in zip(images, keep) if k], labels=labels[keep],
                         class_names=list(concepts), keys=[p for p, k in zip(images, keep) if k])


# --------------------------------------------------------------------------------------
# Proposals


def map_boxes_to_frame(boxes: np.ndarray, width: int, height: int, new_width: int, new_height: int
                       ) -> np.ndarray:
    """Scale inclusive xyxy boxes [K, 4] from a width x height image to the new frame, clipped."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {width}x{height}")
    b[:, [0, 2]] *= new_width / width
    b[:, [1, 3]] *= new_height / height
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, new_width - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, new_height - 1)
    return b


def select_proposals(boxes: np.ndarray, scores: Optional[np.ndarray], bbox_num: int, new_width: int,
                     new_height: int, pad: str = "repeat") -> np.ndarray:
    """Top-``bbox_num`` boxes by score (frame coordinates) -> float64 [bbox_num, 5], padded per ``pad``."""
    if pad not in PAD_CHOICES:
        raise ValueError(f"pad must be one of {PAD_CHOICES}, got {pad!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.ones(len(b)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    ok = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1]) & np.isfinite(b).all(axis=1) & np.isfinite(s)
    b, s = b[ok], s[ok]
    order = np.argsort(-s, kind="stable")[:bbox_num]
    sel = np.concatenate([b[order], s[order, None]], axis=1)
    out = np.empty((bbox_num, 5))
    whole = [0, 0, new_width - 1, new_height - 1, 0.0 if pad == "zero" else 1.0]
    if len(sel) == 0:
        out[:] = whole
    elif len(sel) < bbox_num and pad == "repeat":
        out[:] = sel[np.arange(bbox_num) % len(sel)]
    else:
        out[: len(sel)] = sel
        out[len(sel):] = whole
    return out


def _cell_list(x) -> list:
    """A MATLAB cell array from scipy.io.loadmat as a flat Python list."""
    x = np.asarray(x)
    if x.dtype == object:
        return list(x.reshape(-1))
    return [x]


def _mat_str(x) -> str:
    x = np.asarray(x)
    if x.dtype.kind in "US":
        return str(x.reshape(-1)[0]) if x.size == 1 and x.ndim > 0 else str(x)
    return str(x.reshape(-1)[0]) if x.size else ""


class PrecomputedProposals:
    """Boxes + scores per image from a file.

    ``.mat`` (as WSDDN's released Edge Boxes / Fast R-CNN's selective search): cells
    ``images`` (ids or names), ``boxes`` (K x 4 per image) and ``boxScores`` or ``scores``
    (optional). MATLAB files are 1-based and WSDDN/Fast R-CNN store (y1, x1, y2, x2):
    defaults ``order="yxyx"``, ``one_based=True``.
    ``.npz`` (this project's layout): ``images`` [n] str, ``counts`` [n] int, ``boxes``
    [sum(counts), 4] and optional ``scores`` [sum(counts)]; defaults ``order="xyxy"``,
    ``one_based=False``.
    Images are looked up by key, file name, or file name without extension.
    """

    def __init__(self, path: str, order: Optional[str] = None, one_based: Optional[bool] = None):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise DatasetFormatError(f"proposal file not found: {self.path}")
        ext = os.path.splitext(self.path)[1].lower()
        if ext == ".mat":
            names, boxes, scores = self._load_mat()
            order = order or "yxyx"
            one_based = True if one_based is None else one_based
        elif ext == ".npz":
            names, boxes, scores = self._load_npz()
            order = order or "xyxy"
            one_based = False if one_based is None else one_based
        else:
            raise DatasetFormatError(f"{self.path}: unsupported proposal file type {ext!r} (use .mat or .npz)")
        if order not in ("xyxy", "yxyx"):
            raise ValueError(f"order must be 'xyxy' or 'yxyx', got {order!r}")
        self.table: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
        for name, b, s in zip(names, boxes, scores):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4) if np.size(b) else np.zeros((0, 4))
            if order == "yxyx":
                b = b[:, [1, 0, 3, 2]]
            if one_based:
                b = b - 1.0
            if s is not None:
                s = np.asarray(s, dtype=np.float64).reshape(-1)
                if len(s) != len(b):
                    raise DatasetFormatError(f"{self.path}: image {name!r} has {len(b)} boxes, {len(s)} scores")
            for key in {name, os.path.basename(name), os.path.splitext(os.path.basename(name))[0]}:
                self.table.setdefault(key, (b, s))

    def _load_mat(self):
        import scipy.io

        try:
            m = scipy.io.loadmat(self.path)
        except Exception as exc:  # scipy raises several types for non-MAT input
            raise DatasetFormatError(f"{self.path}: cannot read MAT file ({exc})") from None
        for k in ("images", "boxes"):
            if k not in m:
                raise DatasetFormatError(f"{self.path}: missing variable {k!r} (found {sorted(m)})")
        names = [_mat_str(x) for x in _cell_list(m["images"])]
        boxes = _cell_list(m["boxes"])
        skey = "boxScores" if "boxScores" in m else ("scores" if "scores" in m else None)
        scores = _cell_list(m[skey]) if skey else [None] * len(boxes)
        if not (len(names) == len(boxes) == len(scores)):
            raise DatasetFormatError(f"{self.path}: {len(names)} images, {len(boxes)} box cells, "
                                     f"{len(scores)} score cells")
        return names, boxes, scores

    def _load_npz(self):
        with np.load(self.path, allow_pickle=False) as z:
            for k in ("images", "counts", "boxes"):
                if k not in z.files:
                    raise DatasetFormatError(f"{self.path}: missing array {k!r} (found {z.files})")
            names = [str(x) for x in z["images"]]
            counts = z["counts"].astype(np.int64)
            flat = z["boxes"].reshape(-1, 4)
            sflat = z["scores"].reshape(-1) if "scores" in z.files else None
        if len(counts) != len(names) or counts.sum() != len(flat) or (sflat is not None and len(sflat) != len(flat)):
            raise DatasetFormatError(f"{self.path}: counts do not match images/boxes/scores")
        ends = np.cumsum(counts)
        starts = ends - counts
        boxes = [flat[a:b] for a, b in zip(starts, ends)]
        scores = [None if sflat is None else sflat[a:b] for a, b in zip(starts, ends)]
        return names, boxes, scores

    def __call__(self, key: str, image_path: str, image: Optional[np.ndarray] = None):
        for k in (key, os.path.basename(key), os.path.splitext(os.path.basename(key))[0]):
            if k in self.table:
                return self.table[k]
        raise DatasetFormatError(f"{self.path}: no proposals for image {key!r}")

    needs_image = False

    def describe(self) -> dict:
        return {"source": "precomputed", "file": _file_id(self.path)}


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_proposals_npz(path: str, names: Sequence[str], boxes: Sequence[np.ndarray],
                       scores: Optional[Sequence[np.ndarray]] = None) -> None:
    """Write proposals in the ``.npz`` layout read by :class:`PrecomputedProposals` (xyxy, 0-based)."""
    counts = np.array([len(np.reshape(b, (-1, 4))) for b in boxes], dtype=np.int64)
    flat = np.concatenate([np.reshape(b, (-1, 4)) for b in boxes]) if len(boxes) else np.zeros((0, 4))
    arrays = dict(images=np.array(list(names), dtype=str), counts=counts, boxes=flat.astype(np.float64))
    if scores is not None:
        arrays["scores"] = np.concatenate([np.reshape(s, -1) for s in scores]).astype(np.float64) \
            if len(scores) else np.zeros(0)
    np.savez(path, **arrays)


def edge_boxes_from_edges(edges: np.ndarray, orientation: np.ndarray, max_boxes: int = 500,
                          alpha: float = 0.65, beta: float = 0.75) -> Tuple[np.ndarray, np.ndarray]:
    """OpenCV's Edge Boxes on an edge map + orientation map -> (xyxy inclusive [K, 4], scores [K])."""
    eb = cv2.ximgproc.createEdgeBoxes()
    eb.setMaxBoxes(int(max_boxes))
    eb.setAlpha(float(alpha))
    eb.setBeta(float(beta))
    res = eb.getBoundingBoxes(np.ascontiguousarray(edges, np.float32), np.ascontiguousarray(orientation, np.float32))
    rects, scores = (res if isinstance(res, tuple) and len(res) == 2 else (res, None))
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)
    sc = np.ones(len(boxes)) if scores is None or np.size(scores) == 0 else np.asarray(scores, np.float64).reshape(-1)
    return boxes, sc


class EdgeBoxesProposals:
    """Edge Boxes (cv2.ximgproc) on the structured-edge map of the image.

    ``model_path``: the structured edge detection model, ``model.yml.gz`` from OpenCV's
    opencv_extra repository (``testdata/cv/ximgproc/model.yml.gz``,
    :data:`STRUCTURED_EDGE_MODEL_URL`); the OpenCV wheels do not ship it.
    """

    needs_image = True

    def __init__(self, model_path: str, max_boxes: int = 500, alpha: float = 0.65, beta: float = 0.75):
        if not model_path or not os.path.isfile(model_path):
            raise DatasetFormatError(
                f"--edgeboxes-model: {model_path!r} not found; Edge Boxes needs OpenCV's structured edge "
                f"model model.yml.gz, which the OpenCV wheels do not ship: get it from OpenCV's opencv_extra "
                f"repository, testdata/cv/ximgproc/model.yml.gz ({STRUCTURED_EDGE_MODEL_URL})")
        self.model_path = model_path
        self.max_boxes, self.alpha, self.beta = max_boxes, alpha, beta
        self._sed = None

    def describe(self) -> dict:
        return {"source": "edgeboxes", "model": _file_id(self.model_path), "max_boxes": self.max_boxes,
                "alpha": self.alpha, "beta": self.beta}

    def __getstate__(self):  # the OpenCV detector does not pickle; workers make their own
        return dict(self.__dict__, _sed=None)

    def __call__(self, key: str, image_path: str, image: Optional[np.ndarray] = None):
        if self._sed is None:
            self._sed = cv2.ximgproc.createStructuredEdgeDetection(self.model_path)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        edges = self._sed.detectEdges(rgb)
        orient = self._sed.computeOrientation(edges)
        edges = self._sed.edgesNms(edges, orient)
        return edge_boxes_from_edges(edges, orient, self.max_boxes, self.alpha, self.beta)


def _c_srand():
    """libc's ``srand``: OpenCV's selective search ranks its regions with C's ``rand()``."""
    import ctypes
    import ctypes.util

    for name in (None, ctypes.util.find_library("c"), "msvcrt"):
        try:
            return ctypes.CDLL(name).srand
        except (OSError, AttributeError, TypeError):
            continue
    return None


class SelectiveSearchProposals:
    """OpenCV's selective search, boxes in its rank order, scored from the rank.

    OpenCV ranks the regions with C's process-wide ``rand()``; it is reseeded with
    ``srand(1)`` (C's initial state) before each image, so an image's proposals do not
    depend on which images the process handled before (nor on the number of workers).

    ``score``: ``"rank"`` gives rank r (0-based) the score ``(num - r) / num`` and drops
    ranks >= ``num`` (the number of boxes a line keeps, ``bbox_num``); ``"one"`` gives every
    box 1. ``max_side``: the image is first shrunk so its longer side is at most this
    (speed); boxes are returned in the original image's frame.
    """

    needs_image = True

    def __init__(self, mode: str = "fast", max_side: int = 500, score: str = "rank", num: int = 500):
        if mode not in ("fast", "quality", "single"):
            raise ValueError(f"mode must be 'fast', 'quality' or 'single', got {mode!r}")
        if score not in SS_SCORES:
            raise ValueError(f"score must be one of {SS_SCORES}, got {score!r}")
        if int(num) < 1:
            raise ValueError(f"num must be >= 1, got {num!r}")
        self.mode, self.max_side, self.score, self.num = mode, int(max_side), score, int(num)

    def describe(self) -> dict:
        return {"source": "selective-search", "mode": self.mode, "max_side": self.max_side, "score": self.score,
                "num": self.num}

    def scores(self, count: int) -> np.ndarray:
        """The scores of ranks 0..count-1."""
        if self.score == "one":
            return np.ones(count)
        return (self.num - np.arange(count)) / self.num

    def __call__(self, key: str, image_path: str, image: Optional[np.ndarray] = None):
        h, w = image.shape[:2]
        f = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
            if f < 1 else image
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(small)
        srand = _c_srand()
        if srand is None:
            raise RuntimeError("cannot reach C's srand(): selective search's ranking would depend on the "
                               "images processed before")
        srand(1)
        {"fast": ss.switchToSelectiveSearchFast, "quality": ss.switchToSelectiveSearchQuality,
         "single": ss.switchToSingleStrategy}[self.mode]()
        rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)
        fx, fy = w / small.shape[1], h / small.shape[0]
        boxes = np.stack([rects[:, 0] * fx, rects[:, 1] * fy, (rects[:, 0] + rects[:, 2]) * fx - 1,
                          (rects[:, 1] + rects[:, 3]) * fy - 1], 1)
        if self.score == "rank":
            boxes = boxes[: self.num]
        return boxes, self.scores(len(boxes))


# --------------------------------------------------------------------------------------
# Writing


def format_line(path: str, labels: Sequence[int], boxes: np.ndarray, decimals: int = 2,
                score_decimals: int = 4) -> str:
    """One datalist line (no newline). Rejects paths the space-separated format cannot hold."""
    if not path or any(c.isspace() for c in path):
        raise ValueError(f"image path {path!r} is empty or contains whitespace, which the datalist "
                         "format cannot represent")
    parts = [path] + [str(int(v)) for v in labels]
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
        parts += [f"{v:.{decimals}f}" for v in b[:4]] + [f"{b[4]:.{score_decimals}f}"]
    return " ".join(parts)


def shard_bounds(n: int, shard: Tuple[int, int]) -> Tuple[int, int]:
    """``[start, stop)`` of shard ``(index, count)`` (0-based index) of n images: contiguous
    blocks in list order, so the shards' lists concatenate into the whole list."""
    i, k = int(shard[0]), int(shard[1])
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return n * i // k, n * (i + 1) // k


def _labelset_digest(labelset: MultiLabelSet) -> str:
    h = hashlib.sha1()
    for k, p in enumerate(labelset.paths):
        key = labelset.keys[k] if labelset.keys is not None else p
        h.update(f"{p}\0{key}\0".encode())
    h.update(np.ascontiguousarray(labelset.labels, dtype=np.uint8).tobytes())
    if labelset.sizes is not None:
        h.update(np.asarray(labelset.sizes, dtype=np.int64).tobytes())
    return h.hexdigest()


_WORKER: dict = {}


def _init_worker(source, image_root: str) -> None:
    # one OpenCV thread per process: the processes already use the cores
    cv2.setNumThreads(1)
    _WORKER.update(source=source, image_root=image_root)


def _image_job(job):
    """In a worker (or inline): read the image when needed -> (size, proposals or None)."""
    path, key, size, read = job
    source, root = _WORKER.get("source"), _WORKER.get("image_root", "")
    image = None
    if read:
        full = os.path.join(root, path) if root else path
        image = cv2.imread(full, cv2.IMREAD_COLOR)
        if image is None:
            why = "not found" if not os.path.isfile(full) else "cannot be decoded"
            raise DatasetFormatError(f"image {full!r} {why} (it is read for its proposals or its size; "
                                     "--image-root locates the images)")
        size = (image.shape[1], image.shape[0])
    result = source(key, path, image) if source is not None else None
    return size, result


def _resume_state(partial: Path, meta_path: Path, meta: dict, expected_paths: Sequence[str], restart: bool) -> int:
    """Lines already done in ``partial`` (0 when starting afresh); truncates a torn last line."""
    if restart or not partial.exists():
        for p in (partial, meta_path):
            if p.exists():
                p.unlink()
        return 0
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        old = None
    if old != meta:
        diff = sorted(k for k in set(meta) | set(old or {}) if (old or {}).get(k) != meta.get(k))
        raise DatasetFormatError(f"{partial}: an unfinished list written with other settings "
                                 f"({', '.join(diff) if old else 'no readable ' + meta_path.name}); "
                                 "remove it or pass --restart to start over")
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1  # a line torn by the interruption is redone
    if end < len(data):
        with open(partial, "r+b") as f:
            f.truncate(end)
    lines = data[:end].decode("utf-8").splitlines()
    if len(lines) > len(expected_paths):
        raise DatasetFormatError(f"{partial}: {len(lines)} lines, more than the {len(expected_paths)} to write; "
                                 "remove it or pass --restart")
    for k, line in enumerate(lines):
        if line.split(" ", 1)[0] != expected_paths[k]:
            raise DatasetFormatError(f"{partial}:{k + 1}: expected image {expected_paths[k]!r}, found "
                                     f"{line.split(' ', 1)[0]!r}; remove it or pass --restart")
    return len(lines)


def build_datalist(labelset: MultiLabelSet, out_path: str, *, bbox_num: int, new_width: int, new_height: int,
                   proposals: Optional[Callable] = None, image_root: str = "", pad: str = "repeat",
                   decimals: int = 2, progress: Optional[Callable[[int, int], None]] = None, workers: int = 0,
                   shard: Tuple[int, int] = (0, 1), restart: bool = False) -> int:
    """Write the datalist for ``labelset`` with ``bbox_num`` proposals per image.

    ``proposals``: a :class:`PrecomputedProposals`, :class:`EdgeBoxesProposals`,
    :class:`SelectiveSearchProposals` (or any callable ``(key, image_path, image) ->
    (boxes xyxy [K, 4] in the original image, scores or None)`` with a ``needs_image``
    attribute; it must pickle when ``workers`` > 1). ``image_root`` locates images (to
    read them, or their size when the labels do not carry it).
    ``workers``: processes that read images and compute proposals (0 or 1: this process).
    ``shard``: ``(index, count)``, 0-based: write only that contiguous block of the images.
    An unfinished earlier run with the same settings is continued from ``OUT.partial``
    (finished lines are not redone); ``restart`` discards it. ``progress(done, total)`` is
    called once before the first new line (``done``: lines resumed) and after each line.
    Returns the number of lines written to ``out_path``.
    """
    if bbox_num < 1:
        raise ValueError(f"bbox_num must be >= 1 (the method pools features over proposals), got {bbox_num}")
    if proposals is None:
        raise ValueError("a proposal source is needed")
    if new_width <= 0 or new_height <= 0:
        raise ValueError(f"new_width/new_height must be positive, got {new_width}x{new_height}")
    if pad not in PAD_CHOICES:
        raise ValueError(f"pad must be one of {PAD_CHOICES}, got {pad!r}")
    if getattr(proposals, "score", None) == "rank" and getattr(proposals, "num", bbox_num) != bbox_num:
        raise ValueError(f"the proposals are scored by rank out of num={proposals.num}, but bbox_num={bbox_num}")
    start, stop = shard_bounds(len(labelset), shard)
    needs_image = bool(getattr(proposals, "needs_image", True))
    describe = getattr(proposals, "describe", None)
    meta = {"format": 1, "labels": _labelset_digest(labelset), "bbox_num": int(bbox_num),
            "frame": [int(new_width), int(new_height)], "pad": pad, "decimals": int(decimals),
            "proposals": describe() if describe else repr(proposals), "shard": [int(shard[0]), int(shard[1])],
            "images": [start, stop]}
    out = Path(out_path)
    partial, meta_path = Path(str(out) + ".partial"), Path(str(out) + ".partial.json")
    expected = labelset.paths[start:stop]
    for p in expected:
        if not p or any(c.isspace() for c in p):
            raise DatasetFormatError(f"image path {p!r} is empty or contains whitespace, which the datalist "
                                     "format cannot represent")
    done = _resume_state(partial, meta_path, meta, expected, restart)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    total = stop - start
    if progress is not None:
        progress(done, total)

    def jobs():
        for i in range(start + done, stop):
            path = labelset.paths[i]
            key = labelset.keys[i] if labelset.keys is not None else path
            size = labelset.sizes[i] if labelset.sizes is not None else None
            yield path, key, size, needs_image or size is None

    # only image-reading sources go to the workers; a precomputed table stays here
    worker_source = proposals if needs_image else None
    parallel = workers > 1 and total - done > 1 and (needs_image or labelset.sizes is None)
    pool = None
    try:
        if parallel:
            pool = OrderedProcessMap(_image_job, int(workers), clean_context([__name__]), initializer=_init_worker,
                                     initargs=(worker_source, image_root), in_flight=1 if needs_image else 8)
            results = pool.imap(jobs())
        else:
            _init_worker(worker_source, image_root)
            results = map(_image_job, jobs())
        with open(partial, "a", newline="\n", encoding="utf-8") as f:
            for k, (size, result) in enumerate(results, start=start + done):
                key = labelset.keys[k] if labelset.keys is not None else labelset.paths[k]
                if result is None:
                    result = proposals(key, labelset.paths[k], None)
                b, sc = result
                b = map_boxes_to_frame(b, size[0], size[1], new_width, new_height)
                boxes = select_proposals(b, sc, bbox_num, new_width, new_height, pad)
                f.write(format_line(labelset.paths[k], labelset.labels[k], boxes, decimals) + "\n")
                f.flush()  # a finished line survives an interruption
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        if pool is not None:
            pool.close()
        _WORKER.clear()
    os.replace(partial, out)
    meta_path.unlink()
    return total


class ConsoleProgress:
    """``progress(done, total)`` for :func:`build_datalist` on a console: a bar with rate and
    ETA on a terminal, otherwise a plain line every ``period`` seconds (logs stay short).
    The rate counts only this run's images (not the resumed ones)."""

    def __init__(self, stream=None, period: float = 30.0, what: str = "images"):
        import sys

        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.period, self.what = period, what
        self.t0 = self.last = None
        self.first = 0

    def __call__(self, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.last, self.first = now, now, done
            if done:
                print(f"resuming: {done} of {total} {self.what} already done", file=self.stream, flush=True)
            return
        if not (self.tty or now - self.last >= self.period or done == total):
            return
        self.last = now
        new, dt = done - self.first, now - self.t0
        rate = new / dt if dt > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        eta_s = "--:--:--" if eta != eta else f"{int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
        width = 30
        bar = "#" * int(width * done / max(total, 1))
        text = (f"{done}/{total} {self.what} ({100 * done / max(total, 1):.1f}%) {rate:.2f}/s ETA {eta_s}")
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r[{bar:<{width}}] {text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    def rate(self, done: int) -> float:
        import time

        dt = time.monotonic() - (self.t0 or time.monotonic())
        return (done - self.first) / dt if dt > 0 else 0.0
