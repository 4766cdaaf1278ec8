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
A source without scores (selective search) gives every box the score 1.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

PAD_CHOICES = ("repeat", "whole", "zero")


class DatasetFormatError(ValueError):
    """An annotation or proposal file does not have the expected layout."""


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
        raise FileNotFoundError(f"COCO instances file not found: {instances_json}")
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
        raise FileNotFoundError(f"NUS-WIDE file not found: {path}")
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
        raise FileNotFoundError(f"NUS-WIDE: neither {cfile} nor {all_dir} exists")
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
            raise FileNotFoundError(f"proposal file not found: {self.path}")
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
        raise KeyError(f"{self.path}: no proposals for image {key!r}")

    needs_image = False


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

    ``model_path``: the structured edge detection model (``model.yml.gz`` of OpenCV's
    ximgproc samples); it is not shipped, so it must be supplied.
    """

    needs_image = True

    def __init__(self, model_path: str, max_boxes: int = 500, alpha: float = 0.65, beta: float = 0.75):
        if not model_path or not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"Edge Boxes needs a structured edge detection model file (model.yml.gz from OpenCV's "
                f"ximgproc samples), not found: {model_path!r}; pass its path, or use precomputed "
                f"proposals or selective search instead")
        self.model_path = model_path
        self.max_boxes, self.alpha, self.beta = max_boxes, alpha, beta
        self._sed = None

    def __call__(self, key: str, image_path: str, image: Optional[np.ndarray] = None):
        if self._sed is None:
            self._sed = cv2.ximgproc.createStructuredEdgeDetection(self.model_path)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        edges = self._sed.detectEdges(rgb)
        orient = self._sed.computeOrientation(edges)
        edges = self._sed.edgesNms(edges, orient)
        return edge_boxes_from_edges(edges, orient, self.max_boxes, self.alpha, self.beta)


class SelectiveSearchProposals:
    """OpenCV's selective search (no scores: every box scores 1, source order kept).

    ``max_side``: the image is first shrunk so its longer side is at most this (speed);
    boxes are returned in the original image's frame.
    """

    needs_image = True

    def __init__(self, mode: str = "fast", max_side: int = 500):
        if mode not in ("fast", "quality", "single"):
            raise ValueError(f"mode must be 'fast', 'quality' or 'single', got {mode!r}")
        self.mode, self.max_side = mode, int(max_side)

    def __call__(self, key: str, image_path: str, image: Optional[np.ndarray] = None):
        h, w = image.shape[:2]
        f = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
            if f < 1 else image
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(small)
        {"fast": ss.switchToSelectiveSearchFast, "quality": ss.switchToSelectiveSearchQuality,
         "single": ss.switchToSingleStrategy}[self.mode]()
        rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)
        fx, fy = w / small.shape[1], h / small.shape[0]
        boxes = np.stack([rects[:, 0] * fx, rects[:, 1] * fy, (rects[:, 0] + rects[:, 2]) * fx - 1,
                          (rects[:, 1] + rects[:, 3]) * fy - 1], 1)
        return boxes, None


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


def build_datalist(labelset: MultiLabelSet, out_path: str, *, bbox_num: int, new_width: int, new_height: int,
                   proposals: Optional[Callable] = None, image_root: str = "", pad: str = "repeat",
                   decimals: int = 2, progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Write the datalist for ``labelset`` with ``bbox_num`` proposals per image.

    ``proposals``: a :class:`PrecomputedProposals`, :class:`EdgeBoxesProposals`,
    :class:`SelectiveSearchProposals` (or any callable ``(key, image_path, image) ->
    (boxes xyxy [K, 4] in the original image, scores or None)``); None only with bbox_num 0.
    ``image_root`` locates images (to read them, or their size when the labels do not
    carry it). Returns the number of lines written.
    """
    if bbox_num < 0:
        raise ValueError(f"bbox_num must be >= 0, got {bbox_num}")
    if bbox_num > 0 and proposals is None:
        raise ValueError("bbox_num > 0 needs a proposal source")
    if new_width <= 0 or new_height <= 0:
        raise ValueError(f"new_width/new_height must be positive, got {new_width}x{new_height}")
    needs_image = getattr(proposals, "needs_image", True) if proposals is not None else False
    tmp = str(out_path) + ".tmp"
    n = len(labelset)
    with open(tmp, "w", newline="\n") as f:
        for i in range(n):
            path = labelset.paths[i]
            key = labelset.keys[i] if labelset.keys is not None else path
            image = None
            size = labelset.sizes[i] if labelset.sizes is not None else None
            if bbox_num > 0 and (needs_image or size is None):
                full = os.path.join(image_root, path) if image_root else path
                image = cv2.imread(full, cv2.IMREAD_COLOR)
                if image is None:
                    raise FileNotFoundError(f"cannot read image {full!r} (needed for its proposals or size)")
                size = (image.shape[1], image.shape[0])
            if bbox_num > 0:
                b, s = proposals(key, path, image)
                b = map_boxes_to_frame(b, size[0], size[1], new_width, new_height)
                boxes = select_proposals(b, s, bbox_num, new_width, new_height, pad)
            else:
                boxes = np.zeros((0, 5))
            f.write(format_line(path, labelset.labels[i], boxes, decimals) + "\n")
            if progress is not None:
                progress(i + 1, n)
    os.replace(tmp, out_path)
    return n
