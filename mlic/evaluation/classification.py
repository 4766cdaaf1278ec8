"""Multi-label classification metrics (SPEC section 6).

Scores are ``images x classes``; labels are 0/1 of the same shape. Numpy arrays, torch
tensors and nested lists are accepted. All metrics are returned as fractions in [0, 1];
``MultiLabelReport.format_table`` prints percentages as the paper does.

Ranking and ties: images are ranked by a *stable* descending sort of the scores, so
images with equal scores keep their input order (the earlier image ranks higher).
With ties the non-interpolated AP therefore depends on the input order; scikit-learn
instead groups tied scores into one threshold, so the two agree only without ties.
The top-k selection of classes per image uses the same rule (lower class index first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mlic.evaluation._checks import scores_and_labels

AP_MODES = ("standard", "voc", "voc11")


def precision_recall_at_ranks(scores, labels):
    """Precision and recall after each rank of a stable descending sort (one class).

    Returns ``(precision, recall, order)`` with ``order`` the ranking (image indices).
    Recall is NaN-free only when there is a positive; with none it is all zeros.
    """
    s, y = scores_and_labels(scores, labels, ndim=1)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(y[order])
    precision = tp / np.arange(1, len(s) + 1)
    npos = int(y.sum())
    recall = tp / npos if npos else np.zeros_like(precision)
    return precision, recall, order


def _voc_all_point(precision: np.ndarray, recall: np.ndarray) -> float:
    # Area under the precision envelope (the max precision at any recall >= r), as
    # the VOC 2010+ devkit computes it.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _voc_11_point(precision: np.ndarray, recall: np.ndarray) -> float:
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        hit = recall >= t - 1e-12
        total += precision[hit].max() if hit.any() else 0.0
    return total / 11.0


def ap_from_ranked(hits: np.ndarray, npos: int, mode: str = "standard") -> float:
    """AP from a ranked 0/1 hit vector and the number of positives (NaN when npos == 0).

    ``hits`` may hold fewer ones than ``npos`` (positives never retrieved, as in
    detection); those count as precision 0 in the standard mode.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    if npos == 0:
        return float("nan")
    hits = np.asarray(hits, dtype=bool)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    if mode == "standard":
        return float(precision[hits].sum() / npos)
    recall = tp / npos
    return _voc_all_point(precision, recall) if mode == "voc" else _voc_11_point(precision, recall)


def average_precision(scores, labels, mode: str = "standard"):
    """AP of one class (1-D inputs, returns a float) or of each class (2-D, returns an array).

    ``mode``: "standard" (non-interpolated: the mean over the positives of the
    precision at their rank), "voc" (all-point interpolated, area under the precision
    envelope) or "voc11" (VOC2007 11-point). A class without positives gets NaN.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    s, y = scores_and_labels(scores, labels, ndim=(1, 2))
    if s.ndim == 1:
        order = np.argsort(-s, kind="stable")
        return ap_from_ranked(y[order], int(y.sum()), mode)
    order = np.argsort(-s, axis=0, kind="stable")
    ranked = np.take_along_axis(y, order, axis=0)
    return np.array([ap_from_ranked(ranked[:, c], int(ranked[:, c].sum()), mode) for c in range(s.shape[1])])


def mean_average_precision(scores, labels, mode: str = "standard"):
    """``(mAP, per-class AP, excluded class indices)``; classes without positives are excluded.

    mAP is NaN when no class has a positive.
    """
    ap = average_precision(scores, labels, mode)
    ap = np.atleast_1d(ap)
    excluded = np.flatnonzero(np.isnan(ap))
    kept = ap[~np.isnan(ap)]
    return (float(kept.mean()) if kept.size else float("nan")), ap, excluded.tolist()


def _safe_div(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


@dataclass
class ThresholdMetrics:
    """CP/CR/CF1 (per-class averages) and OP/OR/OF1 (overall) with the counts behind them.

    Nc, Np, Ng: per class, correct positive predictions, positive predictions and
    ground-truth positives. Per-class ratios with a zero denominator count as 0 (so a
    class never predicted adds 0 to CP, a class without positives adds 0 to CR; the
    means run over all classes, as in the spec's formulas).
    """

    CP: float
    CR: float
    CF1: float
    OP: float
    OR: float
    OF1: float
    Nc: np.ndarray
    Np: np.ndarray
    Ng: np.ndarray
    threshold: float
    top_k: Optional[int] = None

    def as_dict(self, suffix: str = "") -> dict:
        return {f"{k}{suffix}": float(getattr(self, k)) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}


def predictions(scores, threshold: float = 0.5, top_k: Optional[int] = None) -> np.ndarray:
    """Boolean predictions: score >= threshold and, with ``top_k``, among the image's k best classes."""
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    if top_k is not None:
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k: expected a positive integer, got {top_k!r}")
        if top_k < s.shape[1]:
            best = np.argsort(-s, axis=1, kind="stable")[:, : int(top_k)]
            keep = np.zeros_like(pred)
            np.put_along_axis(keep, best, True, axis=1)
            pred &= keep
    return pred


def threshold_metrics(scores, labels, threshold: float = 0.5, top_k: Optional[int] = None,
                      from_logits: bool = False) -> ThresholdMetrics:
    """CP, CR, CF1, OP, OR, OF1 of the predictions ``score >= threshold`` (optionally top-k per image).

    ``scores`` are probabilities; with ``from_logits`` they are logits and the threshold
    applies to their sigmoid (the top-k ranking uses the logits, which orders alike).
    """
    s, y = scores_and_labels(scores, labels)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold: must be finite, got {threshold!r}")
    if from_logits:
        # sigmoid(x) >= t  <=>  x >= logit(t); comparing logits avoids ties from saturation
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: with from_logits it must be in (0, 1), got {threshold!r}")
        cut = float(np.log(threshold) - np.log1p(-threshold))
    else:
        cut = threshold
    pred = predictions(s, cut, top_k)
    nc = (pred & y).sum(0)
    np_ = pred.sum(0)
    ng = y.sum(0)
    cp = float(_safe_div(nc, np_).mean())
    cr = float(_safe_div(nc, ng).mean())
    op = float(_safe_div(nc.sum(), np_.sum()))
    or_ = float(_safe_div(nc.sum(), ng.sum()))
    return ThresholdMetrics(cp, cr, _f1(cp, cr), op, or_, _f1(op, or_), nc, np_, ng, float(threshold),
                            None if top_k is None else int(top_k))


@dataclass
class MultiLabelReport:
    """Everything the paper reports for multi-label classification.

    ``ap`` holds one AP per class (NaN for the classes in ``excluded_classes``, which
    have no positive and are left out of ``mAP``).
    """

    mAP: float
    ap: np.ndarray
    excluded_classes: list
    all: ThresholdMetrics
    topk: ThresholdMetrics
    ap_mode: str = "standard"
    num_images: int = 0
    class_names: Optional[list] = field(default=None)

    @property
    def top_k(self) -> int:
        return self.topk.top_k

    def _name(self, c: int) -> str:
        return self.class_names[c] if self.class_names else str(c)

    def to_dict(self, per_class: bool = False) -> dict:
        """Flat ``{name: float}``: mAP, CP..OF1, CP_top3..OF1_top3 and, optionally, ``AP/<class>``."""
        out = {"mAP": float(self.mAP)}
        out.update(self.all.as_dict())
        out.update(self.topk.as_dict(f"_top{self.top_k}"))
        if per_class:
            out.update({f"AP/{self._name(c)}": float(a) for c, a in enumerate(self.ap)})
        return out

    def format_table(self, per_class: bool = False) -> str:
        """Text table in percent, as in the paper."""
        def pct(v):
            return "   n/a" if np.isnan(v) else f"{100 * v:6.2f}"

        n_cls = len(self.ap)
        lines = [f"mAP {pct(self.mAP).strip()} ({self.ap_mode} AP over {n_cls - len(self.excluded_classes)} "
                 f"of {n_cls} classes, {self.num_images} images)"]
        if self.excluded_classes:
            names = ", ".join(self._name(c) for c in self.excluded_classes[:10])
            more = "" if len(self.excluded_classes) <= 10 else f", ... ({len(self.excluded_classes)} in all)"
            lines.append(f"excluded from mAP (no positives): {names}{more}")
        keys = ("CP", "CR", "CF1", "OP", "OR", "OF1")
        lines.append(f"{'':<8}" + "".join(f"{k:>8}" for k in keys))
        for title, m in (("all", self.all), (f"top-{self.top_k}", self.topk)):
            lines.append(f"{title:<8}" + "".join(f"{pct(getattr(m, k)):>8}" for k in keys))
        lines.append(f"(threshold {self.all.threshold:g})")
        if per_class:
            width = max(len(self._name(c)) for c in range(n_cls))
            lines.append("per-class AP:")
            lines += [f"  {self._name(c):<{width}} {pct(a)}" for c, a in enumerate(self.ap)]
        return "\n".join(lines)


def evaluate_multilabel(scores, labels, threshold: float = 0.5, top_k: int = 3, ap_mode: str = "standard",
                        class_names: Optional[Sequence[str]] = None, from_logits: bool = False) -> MultiLabelReport:
    """mAP, per-class AP and the thresholded metrics for all predictions and the top-k ones.

    ``scores``: images x classes probabilities (logits with ``from_logits``); ``labels``
    0/1 of the same shape; ``class_names``: one name per class, for printing.
    """
    s, y = scores_and_labels(scores, labels)
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != s.shape[1]:
            raise ValueError(f"class_names: {len(class_names)} names for {s.shape[1]} classes")
    m, ap, excluded = mean_average_precision(s, y, ap_mode)
    return MultiLabelReport(
        mAP=m, ap=ap, excluded_classes=excluded,
        all=threshold_metrics(s, y, threshold, None, from_logits),
        topk=threshold_metrics(s, y, threshold, top_k, from_logits),
        ap_mode=ap_mode, num_images=int(s.shape[0]), class_names=class_names,
    )
