"""PNG figures: qualitative results, precision-recall curves, training curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas,
so nothing here touches pyplot's global state or needs a display.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mlic.evaluation._checks import check_finite, scores_and_labels, to_numpy
from mlic.evaluation.classification import average_precision, precision_recall_at_ranks

CORRECT = "#1f4fd8"  # blue
WRONG = "#d62728"  # red


def _save(fig: Figure, out_path) -> Path:
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"out_path: figures are written as PNG, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_path, format="png")
    return out_path


def _load_image(image) -> np.ndarray:
    """RGB uint8 from a BGR uint8 array (H x W x 3 or H x W) or an image path."""
    if isinstance(image, (str, Path)):
        import cv2

        arr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if arr is None:
            raise ValueError(f"image: cannot read {image}")
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image: expected a BGR uint8 array H x W x 3, got {arr.dtype} of shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, ::-1])


def _vector(x, name: str, n: Optional[int] = None) -> np.ndarray:
    v = to_numpy(x, name).reshape(-1)
    check_finite(v, name)
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values, got {v.shape[0]}")
    return v


def plot_qualitative(image, boxes, objectness, class_names: Sequence[str], scores_kd, scores_no_kd, labels,
                     out_path, num_proposals: int = 10, top_k: int = 3, boxes_frame: Optional[tuple] = None,
                     title: Optional[str] = None, caption: bool = True) -> Path:
    """The paper's qualitative figure for one image.

    Top: the image with its ``num_proposals`` proposals of highest teacher objectness
    (inclusive x1, y1, x2, y2 boxes, each labelled with its score). Bottom: the student's
    ``top_k`` labels without and with knowledge distillation, blue when the label is in
    the ground truth and red otherwise. ``boxes_frame=(width, height)`` gives the frame
    the boxes are expressed in (e.g. (672, 672) for datalist boxes) when it differs
    from the image's size; they are rescaled to the image. ``caption`` adds a line that
    says what the numbers and the colours mean, so the picture reads on its own.
    """
    rgb = _load_image(image)
    h, w = rgb.shape[:2]
    b = to_numpy(boxes, "boxes")
    if b.ndim != 2 or b.shape[1] < 4:
        raise ValueError(f"boxes: expected N x 4 (x1, y1, x2, y2), got shape {b.shape}")
    b = b[:, :4].copy()
    check_finite(b, "boxes")
    obj = _vector(objectness, "objectness", b.shape[0])
    names = [str(n) for n in class_names]
    kd = _vector(scores_kd, "scores_kd", len(names))
    no_kd = _vector(scores_no_kd, "scores_no_kd", len(names))
    gt = _vector(labels, "labels", len(names))
    if not np.isin(gt, (0.0, 1.0)).all():
        raise ValueError("labels: must be 0 or 1 per class")
    if boxes_frame is not None:
        fw, fh = boxes_frame
        b[:, [0, 2]] *= w / float(fw)
        b[:, [1, 3]] *= h / float(fh)

    # figure height follows the image's aspect ratio so the image fills its panel
    img_h, text_h, title_h = 6.2 * h / w, 1.3, 0.35 if title else 0.1
    cap_h = 0.55 if caption else 0.0
    total = img_h + text_h + title_h + cap_h
    fig = Figure(figsize=(6.4, total), dpi=100)
    grid = fig.add_gridspec(2, 2, height_ratios=[img_h, text_h], hspace=0.02, wspace=0.05,
                            left=0.015, right=0.985, top=1 - title_h / total, bottom=0.01 + cap_h / total)
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(rgb)
    ax.set_axis_off()
    colors = ("#ffdd00", "#00e5ff", "#ff00ff", "#7cfc00", "#ff8c00", "#00bfff", "#ff1493", "#adff2f",
              "#ffa07a", "#e0e0e0")
    top = np.argsort(-obj, kind="stable")[:num_proposals]
    for rank, r in enumerate(top[::-1]):  # best drawn last, on top
        x1, y1, x2, y2 = b[r]
        color = colors[(len(top) - 1 - rank) % len(colors)]
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, lw=1.6, ec=color))
        ax.text(x1, y1, f"{obj[r]:.2f}", fontsize=7, color="black", va="bottom", ha="left",
                bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    for col, (head, s) in enumerate((("S-Cls w/o KD", no_kd), ("S-Cls w/ KD", kd))):
        tax = fig.add_subplot(grid[1, col])
        tax.set_axis_off()
        tax.text(0.5, 0.95, head, ha="center", va="top", fontsize=10, fontweight="bold", transform=tax.transAxes)
        for i, c in enumerate(np.argsort(-s, kind="stable")[:top_k]):
            tax.text(0.5, 0.70 - 0.22 * i, f"{names[c]} ({s[c]:.2f})", ha="center", va="top", fontsize=10,
                     color=CORRECT if gt[c] else WRONG, transform=tax.transAxes)
    if caption:
        fig.text(0.5, 0.5 * cap_h / total,
                 f"Boxes: the {len(top)} proposals the teacher (WSDDN) weighs most, with that objectness (its\n"
                 f"detection-stream score summed over classes). Below: each student's top {top_k} labels and\n"
                 "probabilities; blue = in the ground truth, red = not.", ha="center", va="center", fontsize=7.5)
    return _save(fig, out_path)


def _class_indices(classes, names, has_pos, max_classes):
    if classes is None:
        return [c for c in range(len(names)) if has_pos[c]][:max_classes]
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(f"classes: unknown class name {c!r}")
            c = names.index(c)
        if not 0 <= int(c) < len(names):
            raise ValueError(f"classes: index {c} out of range for {len(names)} classes")
        out.append(int(c))
    return out


def plot_pr_curves(scores, labels, out_path, class_names: Optional[Sequence[str]] = None,
                   classes: Optional[Sequence[Union[int, str]]] = None, max_classes: int = 15, ncols: int = 4,
                   ap_mode: str = "standard") -> Path:
    """A grid of per-class precision-recall curves plus an overall one.

    ``classes``: indices or names to draw; by default the first ``max_classes`` classes
    that have a positive. The overall panel pools all (image, class) pairs (micro
    average) and its title also gives the mAP over the classes with positives. Each
    panel's title gives its AP (``ap_mode``); curves treat tied scores as one
    threshold, as ``mlic.evaluation`` does.
    """
    s, y = scores_and_labels(scores, labels)
    n_cls = s.shape[1]
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(n_cls)]
    if len(names) != n_cls:
        raise ValueError(f"class_names: {len(names)} names for {n_cls} classes")
    has_pos = y.any(0)
    if not has_pos.any():
        raise ValueError("labels: no class has a positive; precision-recall curves are undefined")
    chosen = _class_indices(classes, names, has_pos, max_classes)
    panels = len(chosen) + 1
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.5 * nrows), dpi=100)
    aps = list(average_precision(s, y, ap_mode))
    m = float(np.nanmean(aps))

    def panel(k, sc, lab, title):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        if lab.any():
            prec, rec, _ = precision_recall_at_ranks(sc, lab)
            ax.step(np.concatenate(([0.0], rec)), np.concatenate(([1.0], prec)), where="post", lw=1.3)
        else:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("precision", fontsize=7)
        if k >= panels - ncols:
            ax.set_xlabel("recall", fontsize=7)

    for k, c in enumerate(chosen):
        ap = aps[c]
        panel(k, s[:, c], y[:, c], f"{names[c]}  AP {100 * ap:.1f}" if not np.isnan(ap) else names[c])
    flat_s, flat_y = s.reshape(-1), y.reshape(-1)
    micro = average_precision(flat_s, flat_y, ap_mode)
    panel(len(chosen), flat_s, flat_y, f"overall  AP {100 * micro:.1f} / mAP {100 * m:.1f}")
    fig.tight_layout()
    return _save(fig, out_path)


def read_csv_log(path) -> tuple:
    """``(header, {column: float array})`` of a CSV log; empty or non-numeric cells become NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{path}: empty file (expected a header line)")
    header = [h.strip() for h in rows[0]]
    data = {h: np.full(len(rows) - 1, np.nan) for h in header}
    for i, row in enumerate(rows[1:]):
        if len(row) > len(header):
            raise ValueError(f"{path}:{i + 2}: {len(row)} fields but the header has {len(header)}")
        for h, v in zip(header, row):
            try:
                data[h][i] = float(v) if v.strip() else np.nan
            except ValueError:
                pass
    return header, data


def _running_mean(y: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last k values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_training_curves(csv_paths, out_path, x: str = "iter", columns: Optional[Sequence[str]] = None,
                         ncols: int = 3, log_scale: Sequence[str] = ("lr",), title: Optional[str] = None,
                         smooth: int = 0, omit: Sequence[str] = ("img_per_s",)) -> Path:
    """One subplot per numeric column of CSV logs (e.g. the trainer's log.csv and eval.csv), against ``x``.

    Several files may be given: a column present in more than one is drawn in one
    subplot with a line per file. ``columns`` restricts the plot; ``log_scale`` names
    columns drawn with a logarithmic y axis (when all their values are positive).
    ``smooth`` > 1 draws the running mean of that many points over the raw values (drawn
    faint). Without ``columns``, the columns in ``omit`` (throughput: it plots the
    machine's load) and columns that never change (a fixed learning rate) are left out.
    """
    if isinstance(csv_paths, (str, Path)):
        csv_paths = [csv_paths]
    series = {}  # column -> [(file stem, x values, y values)]
    for p in csv_paths:
        header, data = read_csv_log(p)
        if x not in data:
            raise ValueError(f"{p}: no {x!r} column (columns: {header})")
        for h in header:
            if h == x or np.isnan(data[h]).all() or (columns is not None and h not in columns):
                continue
            ok = ~np.isnan(data[h]) & ~np.isnan(data[x])
            series.setdefault(h, []).append((Path(p).stem, data[x][ok], data[h][ok]))
    if columns is not None:
        missing = [c for c in columns if c not in series]
        if missing:
            raise ValueError(f"columns: no numeric data for {missing} in {[str(p) for p in csv_paths]}")
        order = list(columns)
    else:
        order = [h for h in series if h not in omit and
                 any(len(ys) > 1 and np.ptp(ys) > 0 for _, _, ys in series[h])] or list(series)
    if not order:
        raise ValueError(f"no numeric column besides {x!r} in {[str(p) for p in csv_paths]}")
    ncols = max(1, min(ncols, len(order)))
    nrows = math.ceil(len(order) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows + (0.35 if title else 0.0)), dpi=100)
    for k, name in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for i, (stem, xs, ys) in enumerate(series[name]):
            label = stem if len(series[name]) > 1 else None
            color = f"C{i}"
            if smooth > 1 and len(xs) > smooth:
                ax.plot(xs, ys, lw=0.6, color=color, alpha=0.25)
                ax.plot(xs, _running_mean(ys, smooth), lw=1.4, color=color, label=label)
            else:
                ax.plot(xs, ys, lw=1.2, color=color, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if name in log_scale and all((ys > 0).all() for _, _, ys in series[name]):
            ax.set_yscale("log")
        if len(series[name]) > 1:
            ax.legend(fontsize=7)
        note = f" (running mean of {smooth}, raw faint)" if smooth > 1 and len(series[name][0][1]) > smooth else ""
        ax.set_title(name + note, fontsize=8)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)
