"""Weakly supervised detection metrics: CorLoc and VOC detection AP (SPEC section 6).

Boxes are ``(x1, y1, x2, y2)`` in *inclusive* pixel coordinates, as in the VOC devkit
and Caffe: a box's width is ``x2 - x1 + 1`` and IoU uses those areas. Overlap tests
are ``IoU >= threshold`` (the devkit's rule).

Ground truth per image is ``{"boxes": G x 4, "labels": G class indices, "difficult":
G bools (optional)}`` or the tuple ``(boxes, labels[, difficult])``.

- Detection AP, per class: each image's regions scored by ``s[r, c]`` go through
  greedy NMS at 0.4 (a region is dropped when its IoU with a kept, higher-scoring one
  is > 0.4; among equal scores the earlier region goes first, i.e. the proposal source's
  order); the survivors of all images are ranked by score and matched greedily: a
  detection is a true positive when its best-overlapping ground-truth box of the class
  has IoU >= 0.5 and was not matched before; if that box is difficult the detection is
  ignored. Recall is over the non-difficult boxes; AP is VOC all-point by default.
  Detections with equal scores form one threshold (``ties="group"``, the default): the
  number of true positives in a tied group does not depend on the order inside it (each
  detection can only take its own best box), so the AP does not depend on the order of
  the images either. ``ties="input-order"`` ranks ties by image, then region order.
- CorLoc, per class: over the images holding a non-difficult box of the class, the
  fraction whose top-scoring region has IoU >= 0.5 with any box of the class (difficult
  ones included). When several regions share the top score, the image counts the
  fraction of them that hit (``ties="group"``: the expected CorLoc when the tie is broken
  at random, independent of the region order); ``ties="input-order"`` takes the first.
  ``corloc`` is the mean over classes with at least one such image; ``corloc_overall``
  pools all (image, class) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mlic.evaluation._checks import check_finite, to_numpy
from mlic.evaluation.classification import AP_MODES, _check_ties, ap_from_ranked


def box_area(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.maximum(b[:, 2] - b[:, 0] + 1, 0) * np.maximum(b[:, 3] - b[:, 1] + 1, 0)


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU (len(a) x len(b)) with inclusive coordinates (+1 in widths and heights)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def nms(boxes, scores, threshold: float = 0.4, iou: Optional[np.ndarray] = None) -> np.ndarray:
    """Greedy NMS: indices kept, by decreasing score (stable); drops IoU > threshold with a kept box.

    ``iou``: the boxes' pairwise IoU when already known (it is shared by all classes).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if iou is None:
        iou = box_iou(boxes, boxes)
    order = np.argsort(-scores, kind="stable")
    over = iou[np.ix_(order, order)] > threshold
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for k in range(len(order)):
        if not suppressed[k]:
            keep.append(order[k])
            suppressed |= over[k]  # earlier entries are already decided
    return np.asarray(keep, dtype=np.int64)


def _gt_entry(g, i: int, num_classes: int):
    if isinstance(g, dict):
        if "boxes" not in g or "labels" not in g:
            raise ValueError(f"gt[{i}]: a dict needs the keys 'boxes' and 'labels', got {sorted(g)}")
        boxes, labels, difficult = g["boxes"], g["labels"], g.get("difficult")
    elif isinstance(g, (tuple, list)) and len(g) in (2, 3):
        boxes, labels = g[0], g[1]
        difficult = g[2] if len(g) == 3 else None
    else:
        raise ValueError(f"gt[{i}]: expected a dict or a (boxes, labels[, difficult]) tuple, got {type(g).__name__}")
    boxes = to_numpy(boxes, f"gt[{i}] boxes")
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"gt[{i}] boxes: expected G x 4, got shape {boxes.shape}")
    check_finite(boxes, f"gt[{i}] boxes")
    labels = to_numpy(labels, f"gt[{i}] labels").reshape(-1)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"gt[{i}]: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"gt[{i}] labels: class indices must be integers in [0, {num_classes}), got {labels.tolist()}")
    if difficult is None:
        difficult = np.zeros(len(labels), dtype=bool)
    else:
        difficult = to_numpy(difficult, f"gt[{i}] difficult").reshape(-1).astype(bool)
        if difficult.shape[0] != labels.shape[0]:
            raise ValueError(f"gt[{i}]: {labels.shape[0]} labels but {difficult.shape[0]} difficult flags")
    return boxes, labels.astype(np.int64), difficult


def _inputs(region_scores, boxes, gt):
    n = len(region_scores)
    if len(boxes) != n or len(gt) != n:
        raise ValueError(f"region_scores, boxes and gt must have one entry per image: "
                         f"got {n}, {len(boxes)} and {len(gt)}")
    if n == 0:
        raise ValueError("region_scores: no images")
    scores, regions = [], []
    num_classes = None
    for i in range(n):
        s = to_numpy(region_scores[i], f"region_scores[{i}]")
        if s.ndim != 2:
            raise ValueError(f"region_scores[{i}]: expected regions x classes, got shape {s.shape}")
        if num_classes is None:
            num_classes = s.shape[1]
        elif s.shape[1] != num_classes:
            raise ValueError(f"region_scores[{i}]: {s.shape[1]} classes, but region_scores[0] has {num_classes}")
        check_finite(s, f"region_scores[{i}]")
        b = to_numpy(boxes[i], f"boxes[{i}]")
        if b.ndim != 2 or b.shape[1] < 4:
            raise ValueError(f"boxes[{i}]: expected regions x 4 (x1, y1, x2, y2), got shape {b.shape}")
        b = b[:, :4]
        if b.shape[0] != s.shape[0]:
            raise ValueError(f"boxes[{i}] has {b.shape[0]} regions but region_scores[{i}] has {s.shape[0]}")
        check_finite(b, f"boxes[{i}]")
        scores.append(s)
        regions.append(b)
    gts = [_gt_entry(g, i, num_classes) for i, g in enumerate(gt)]
    return scores, regions, gts, num_classes


def corloc(region_scores, boxes, gt, iou_threshold: float = 0.5, ties: str = "group"):
    """``(mean CorLoc over classes, per-class CorLoc (NaN without positives), overall fraction)``."""
    _check_ties(ties)
    scores, regions, gts, num_classes = _inputs(region_scores, boxes, gt)
    return _corloc(scores, regions, gts, num_classes, iou_threshold, ties)


def _corloc(scores, regions, gts, num_classes, iou_threshold, ties="group"):
    hits = np.zeros(num_classes, dtype=np.float64)
    positives = np.zeros(num_classes, dtype=np.int64)
    for s, b, (gb, gl, gd) in zip(scores, regions, gts):
        for c in np.unique(gl[~gd]):
            positives[c] += 1
            if len(b) == 0:
                continue
            if ties == "group":
                top = np.flatnonzero(s[:, c] == s[:, c].max())
            else:
                top = np.argmax(s[:, c])[None]  # first maximum
            hit = (box_iou(b[top], gb[gl == c]) >= iou_threshold).any(axis=1)
            hits[c] += hit.mean()
    per_class = np.full(num_classes, np.nan)
    np.divide(hits, positives, out=per_class, where=positives > 0)
    valid = positives > 0
    mean = float(per_class[valid].mean()) if valid.any() else float("nan")
    overall = float(hits.sum() / positives.sum()) if positives.sum() else float("nan")
    return mean, per_class, overall


def corloc_references(boxes, gt, num_classes: int, iou_threshold: float = 0.5) -> dict:
    """What CorLoc a detector must beat on these proposals (mean over classes, as ``corloc``):

    - ``random``: a proposal drawn uniformly (the expected value: all regions tie);
    - ``proposal_score``: the proposal ranked first by its own score, the fifth column of
      ``boxes`` (the datalist's box score; ties shared as in ``corloc``), the same for
      every class, so a detector that only follows the proposal source scores this;
    - ``best``: the proposal that overlaps a box of the class most, the highest CorLoc
      any scoring of these proposals can reach.
    """
    arrays = [to_numpy(b, f"boxes[{i}]") for i, b in enumerate(boxes)]
    for i, b in enumerate(arrays):
        if b.ndim != 2 or b.shape[1] < 5:
            raise ValueError(f"boxes[{i}]: expected regions x 5 (x1, y1, x2, y2, proposal score), got shape {b.shape}")
    flat = [np.zeros((len(b), num_classes)) for b in arrays]
    _, regions, gts, _ = _inputs(flat, arrays, gt)  # checks boxes and ground truth once for the three
    ranked = [np.repeat(b[:, 4:5], num_classes, axis=1) for b in arrays]
    best = []
    for r, (gb, gl, _) in zip(regions, gts):
        overlap = np.zeros((len(r), num_classes))
        for c in np.unique(gl):
            overlap[:, c] = box_iou(r, gb[gl == c]).max(axis=1)
        best.append(overlap)
    return {name: _corloc(s, regions, gts, num_classes, iou_threshold)[0]
            for name, s in (("random", flat), ("proposal_score", ranked), ("best", best))}


def detection_average_precision(region_scores, boxes, gt, nms_threshold: float = 0.4,
                                iou_threshold: float = 0.5, mode: str = "voc", ties: str = "group"):
    """``(mAP, per-class AP (NaN for classes without non-difficult boxes), excluded classes)``."""
    _check_ties(ties)
    scores, regions, gts, num_classes = _inputs(region_scores, boxes, gt)
    return _detection_ap(scores, regions, gts, num_classes, nms_threshold, iou_threshold, mode, ties)


def _match_image(det_boxes, gt_boxes, gt_difficult, iou_threshold):
    """Per detection (in rank order): 1 true positive, 0 false positive, -1 ignored (difficult).

    Detections of one image keep their relative order in the global ranking, so the
    greedy "each box matched once" rule can be applied image by image.
    """
    out = np.zeros(len(det_boxes), dtype=np.int8)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return out
    ov = box_iou(det_boxes, gt_boxes)
    best = np.argmax(ov, axis=1)  # first box on ties, as the devkit
    hit = ov[np.arange(len(best)), best] >= iou_threshold
    difficult = hit & gt_difficult[best]
    out[difficult] = -1
    easy = np.flatnonzero(hit & ~difficult)
    _, first = np.unique(best[easy], return_index=True)
    out[easy[first]] = 1
    return out


def _detection_ap(scores, regions, gts, num_classes, nms_threshold, iou_threshold, mode, ties="group"):
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    det_score = [[] for _ in range(num_classes)]
    det_flag = [[] for _ in range(num_classes)]
    npos = np.zeros(num_classes, dtype=np.int64)
    for s, b, (gb, gl, gd) in zip(scores, regions, gts):
        np.add.at(npos, gl[~gd], 1)
        if len(b) == 0:
            continue
        self_iou = box_iou(b, b)  # shared by the classes' NMS
        for c in range(num_classes):
            keep = nms(b, s[:, c], nms_threshold, self_iou)
            det_score[c].append(s[keep, c])
            det_flag[c].append(_match_image(b[keep], gb[gl == c], gd[gl == c], iou_threshold))
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if npos[c] == 0:
            continue
        if not det_score[c]:
            ap[c] = 0.0
            continue
        flags = np.concatenate(det_flag[c])
        sc = np.concatenate(det_score[c])
        order = np.argsort(-sc, kind="stable")
        kept = flags[order] >= 0  # ignored detections (difficult boxes) leave the ranking
        ranked, ranked_s = flags[order][kept], sc[order][kept]
        ap[c] = ap_from_ranked(ranked == 1, int(npos[c]), mode, ranked_s if ties == "group" else None)
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap, np.flatnonzero(~valid).tolist()


@dataclass
class DetectionReport:
    """CorLoc and detection AP; NaN entries belong to classes without (non-difficult) boxes."""

    corloc: float
    corloc_per_class: np.ndarray
    corloc_overall: float
    mAP: float
    ap: np.ndarray
    excluded_classes: list
    num_images: int = 0
    nms_threshold: float = 0.4
    iou_threshold: float = 0.5
    ap_mode: str = "voc"
    class_names: Optional[list] = field(default=None)
    ties: str = "group"

    def _name(self, c: int) -> str:
        return self.class_names[c] if self.class_names else str(c)

    def to_dict(self, per_class: bool = False) -> dict:
        out = {"CorLoc": float(self.corloc), "CorLoc_overall": float(self.corloc_overall), "det_mAP": float(self.mAP)}
        if per_class:
            for c in range(len(self.ap)):
                out[f"CorLoc/{self._name(c)}"] = float(self.corloc_per_class[c])
                out[f"det_AP/{self._name(c)}"] = float(self.ap[c])
        return out

    def format_table(self, per_class: bool = False) -> str:
        def pct(v):
            return "   n/a" if np.isnan(v) else f"{100 * v:6.2f}"

        n = len(self.ap)
        lines = [f"CorLoc {pct(self.corloc).strip()} (mean over classes; {pct(self.corloc_overall).strip()} "
                 f"over all positive image-class pairs)",
                 f"detection mAP {pct(self.mAP).strip()} ({self.ap_mode} AP, NMS {self.nms_threshold:g}, "
                 f"IoU >= {self.iou_threshold:g}, {n - len(self.excluded_classes)} of {n} classes, "
                 f"{self.num_images} images)"]
        if per_class:
            width = max(max(len(self._name(c)) for c in range(n)), 5)
            lines.append(f"  {'class':<{width}} {'CorLoc':>7} {'AP':>7}")
            lines += [f"  {self._name(c):<{width}} {pct(self.corloc_per_class[c]):>7} {pct(self.ap[c]):>7}"
                      for c in range(n)]
        return "\n".join(lines)


def evaluate_detection(region_scores: Sequence, boxes: Sequence, gt: Sequence, nms_threshold: float = 0.4,
                       iou_threshold: float = 0.5, ap_mode: str = "voc",
                       class_names: Optional[Sequence[str]] = None, ties: str = "group") -> DetectionReport:
    """CorLoc and detection AP from per-image region scores (R_i x C), boxes (R_i x 4, extra columns
    such as a proposal score are ignored) and ground truth (see the module docstring)."""
    _check_ties(ties)
    scores, regions, gts, num_classes = _inputs(region_scores, boxes, gt)
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes")
    cl_mean, cl_per_class, cl_overall = _corloc(scores, regions, gts, num_classes, iou_threshold, ties)
    m, ap, excluded = _detection_ap(scores, regions, gts, num_classes, nms_threshold, iou_threshold, ap_mode,
                                    ties)
    return DetectionReport(cl_mean, cl_per_class, cl_overall, m, ap, excluded, len(scores), nms_threshold,
                           iou_threshold, ap_mode, class_names, ties)
