"""Scored proposals per image and the policy that turns them into a datalist line's boxes.

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

A source is a callable ``(key, image_path, image) -> (boxes xyxy [K, 4] in the original
image, scores or None)`` with a ``needs_image`` attribute and a ``describe()`` of its settings.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from mlic.data.datalist import DatasetFormatError

PAD_CHOICES = ("repeat", "whole", "zero")
STRUCTURED_EDGE_MODEL_URL = "https://github.com/opencv/opencv_extra/raw/master/testdata/cv/ximgproc/model.yml.gz"
SS_SCORES = ("rank", "one")


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
