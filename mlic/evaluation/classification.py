"""Multi-label classification metrics (SPEC section 6).

Scores are ``images x classes``; labels are 0/1 of the same shape. Numpy arrays, torch
tensors and nested lists are accepted. All metrics are returned as fractions in [0, 1];
``MultiLabelReport.format_table`` prints percentages as the paper does.

Ranking and ties: images are ranked by decreasing score, and by default images with
equal scores form one threshold (``ties="group"``), as scikit-learn's
``average_precision_score`` and the VOC devkit's threshold sweep treat them: every
positive of a tied group gets the precision at the end of the group, so the result does
not depend on the order of the images. A model that gives every image the same score gets
AP = the class's positive rate. ``ties="input-order"`` is the order-dependent variant (a
stable sort: of two equal scores the earlier image ranks higher), kept only as a named
option. The top-k selection of classes per image breaks ties by the lower class index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mlic.evaluation._checks import scores_and_labels

AP_MODES = ("standard", "voc", "voc11")
TIE_POLICIES = ("group", "input-order")


def _check_ties(ties: str) -> None:
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties: expected one of {TIE_POLICIES}, got {ties!r}")


def _group_ends(ranked_scores: Optional[np.ndarray], n: int) -> np.ndarray:
    """Indices of the last rank of each threshold: where the next score differs (every rank
    when ``ranked_scores`` is None)."""
    if ranked_scores is None or n == 0:
        return np.arange(n)
    rs = np.asarray(ranked_scores, dtype=np.float64).reshape(-1)
    if len(rs) != n:
        raise ValueError(f"ranked_scores: {len(rs)} scores for {n} ranks")
    return np.flatnonzero(np.append(rs[1:] != rs[:-1], True))


def precision_recall_at_ranks(scores, labels, ties: str = "group"):
    """Precision and recall at each threshold of a descending ranking (one class).

    Returns ``(precision, recall, order)`` with ``order`` the ranking (image indices, a
    stable sort). With ``ties="group"`` there is one point per distinct score (the end of
    each tied group); with ``"input-order"`` one per rank. Recall is all zeros without a
    positive.
    """
    _check_ties(ties)
    s, y = scores_and_labels(scores, labels, ndim=1)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(y[order])
    ends = _group_ends(s[order] if ties == "group" else None, len(s))
    precision = tp[ends] / (ends + 1)
    npos = int(y.sum())
    recall = tp[ends] / npos if npos else np.zeros(len(ends))
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


def ap_from_ranked(hits: np.ndarray, npos: int, mode: str = "standard",
                   ranked_scores: Optional[np.ndarray] = None) -> float:
    """AP from a ranked 0/1 hit vector and the number of positives (NaN when npos == 0).

    ``ranked_scores``: the scores in the same (descending) order; ranks with equal scores
    form one threshold, so each hit of a tied group counts with the precision at the end of
    the group. None: every rank is its own threshold (the order-dependent variant).
    ``hits`` may hold fewer ones than ``npos`` (positives never retrieved, as in
    detection); those count as precision 0 in the standard mode.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    if npos == 0:
        return float("nan")
    hits = np.asarray(hits, dtype=bool)
    n = len(hits)
    tp = np.cumsum(hits)
    ends = _group_ends(ranked_scores, n)
    if n == 0:
        return 0.0
    precision = tp[ends] / (ends + 1)
    if mode == "standard":
        # the hits of group g number tp[end_g] - tp[end_{g-1}]
        per_group = np.diff(np.concatenate(([0], tp[ends])))
        return float(np.sum(per_group * precision) / npos)
    recall = tp[ends] / npos
    return _voc_all_point(precision, recall) if mode == "voc" else _voc_11_point(precision, recall)


def average_precision(scores, labels, mode: str = "standard", ties: str = "group"):
    """AP of one class (1-D inputs, returns a float) or of each class (2-D, returns an array).

    ``mode``: "standard" (non-interpolated: the mean over the positives of the
    precision at their rank), "voc" (all-point interpolated, area under the precision
    envelope) or "voc11" (VOC2007 11-point). A class without positives gets NaN.
    ``ties``: "group" (tied scores form one threshold: a positive's rank is the last rank
    of its tied group) or "input-order" (ties broken by input order; order-dependent).
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    _check_ties(ties)
    s, y = scores_and_labels(scores, labels, ndim=(1, 2))
    if s.ndim == 1:
        order = np.argsort(-s, kind="stable")
        return ap_from_ranked(y[order], int(y.sum()), mode, s[order] if ties == "group" else None)
    order = np.argsort(-s, axis=0, kind="stable")
    ranked = np.take_along_axis(y, order, axis=0)
    ranked_s = np.take_along_axis(s, order, axis=0)
    return np.array([ap_from_ranked(ranked[:, c], int(ranked[:, c].sum()), mode,
                                    ranked_s[:, c] if ties == "group" else None) for c in range(s.shape[1])])


# Above this share of tied scores the ranking metrics say more about the ties than about
# the model (a saturated or dead output); tools/test.py warns.
TIE_WARNING_SHARE = 0.01


def tie_warning(share: float, what: str = "image scores") -> Optional[str]:
    """The warning to print when more than :data:`TIE_WARNING_SHARE` of ``what`` are tied, else None."""
    if share <= TIE_WARNING_SHARE:
        return None
    return (f"{100 * share:.1f}% of the {what} are tied with another score of the same class "
            f"(more than {100 * TIE_WARNING_SHARE:g}%): tied scores count as one threshold, so the ranking "
            "metrics cannot tell those images apart; a saturated or constant output is the usual cause")


def tied_fraction(scores, axis: int = 0) -> float:
    """Share of the scores that equal another score along ``axis`` (for image scores
    [images, classes]: another image's score of the same class). 0 for no ties, 1 when
    every score is tied with some other."""
    s = np.moveaxis(np.asarray(scores, dtype=np.float64), axis, -1)
    n = s.shape[-1] if s.ndim else 0
    if s.size == 0 or n < 2:
        return 0.0
    srt = np.sort(s.reshape(-1, n), axis=1)
    eq = srt[:, 1:] == srt[:, :-1]
    tied = np.zeros(srt.shape, dtype=bool)
    tied[:, 1:] |= eq
    tied[:, :-1] |= eq
    return float(tied.mean())


def mean_average_precision(scores, labels, mode: str = "standard", ties: str = "group"):
    """``(mAP, per-class AP, excluded class indices)``; classes without positives are excluded.

    mAP is NaN when no class has a positive. ``ties`` as in :func:`average_precision`.
    """
    ap = average_precision(scores, labels, mode, ties)
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
    ap_ties: str = "group"
    tied_fraction: float = 0.0

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
        ties = "tied scores grouped" if self.ap_ties == "group" else "ties in input order"
        lines = [f"mAP {pct(self.mAP).strip()} ({self.ap_mode} AP, {ties}, over "
                 f"{n_cls - len(self.excluded_classes)} of {n_cls} classes, {self.num_images} images)"]
        if self.tied_fraction > 0:
            lines.append(f"{100 * self.tied_fraction:.1f}% of the scores are tied with another image's score "
                         "of the same class")
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
                        class_names: Optional[Sequence[str]] = None, from_logits: bool = False,
                        ap_ties: str = "group") -> MultiLabelReport:
    """mAP, per-class AP and the thresholded metrics for all predictions and the top-k ones.

    ``scores``: images x classes probabilities (logits with ``from_logits``); ``labels``
    0/1 of the same shape; ``class_names``: one name per class, for printing;
    ``ap_ties``: how AP treats tied scores (see :func:`average_precision`). The report's
    ``tied_fraction`` is the share of scores tied with another image's score of the class.
    """
    s, y = scores_and_labels(scores, labels)
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != s.shape[1]:
            raise ValueError(f"class_names: {len(class_names)} names for {s.shape[1]} classes")
    m, ap, excluded = mean_average_precision(s, y, ap_mode, ap_ties)
    return MultiLabelReport(
        mAP=m, ap=ap, excluded_classes=excluded,
        all=threshold_metrics(s, y, threshold, None, from_logits),
        topk=threshold_metrics(s, y, threshold, top_k, from_logits),
        ap_mode=ap_mode, num_images=int(s.shape[0]), class_names=class_names, ap_ties=ap_ties,
        tied_fraction=tied_fraction(s, axis=0),
    )
