"""PNG figures: qualitative results, precision-recall curves, training curves.

Each figure has a builder returning the ``Figure`` (``*_figure``: what the tests inspect)
and a ``plot_*`` function writing it as PNG.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas,
so nothing here touches pyplot's global state or needs a display.
"""
from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

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


BOX_COLORS = ("#ffdd00", "#00e5ff", "#ff00ff", "#7cfc00", "#ff8c00", "#00bfff", "#ff1493", "#adff2f",
              "#ffa07a", "#e0e0e0")


def _wrap(text: str, inches: float, fontsize: float, bold: bool = False) -> str:
    """`text` wrapped to lines that fit `inches` at `fontsize` points (DejaVu Sans averages
    about 0.55 em per character, 0.62 in bold)."""
    chars = max(8, int(inches * 72 / ((0.62 if bold else 0.55) * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def _place_tags(fig: Figure, ax, boxes: Sequence[np.ndarray], colors: Sequence[str], fontsize: float = 8) -> list:
    """A tag with its rank (1, 2, ...) at a corner of each box, at the first corner where it
    stays inside the picture and overlaps no tag placed before it (measured in the figure's
    pixels). Returns the tags."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax.apply_aspect()  # the image's final place, so that the tags are measured where they are drawn
    frame = ax.get_window_extent(renderer)
    placed, tags = [], []
    gap = 3.0  # points between the anchor and the tag's edge

    def tag_at(rank, color, x, y, ha, va, dx, dy):
        return ax.annotate(str(rank), (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                           fontweight="bold", color="black", ha=ha, va=va, annotation_clip=False,
                           bbox=dict(facecolor=color, alpha=0.9, pad=1.2, lw=0))

    for rank, ((x1, y1, x2, y2), color) in enumerate(zip(boxes, colors), start=1):
        # corners just outside the box first (its border stays visible), then just inside
        spots = []
        for inside in (False, True):
            for x, y, ha, va in ((x1, y1, "left", "bottom"), (x2, y1, "right", "bottom"), (x1, y2, "left", "top"),
                                 (x2, y2, "right", "top")):
                if inside:
                    va = "top" if va == "bottom" else "bottom"
                dy = gap if va == "bottom" else -gap
                dx = gap if ha == "left" else -gap
                spots.append((x, y, ha, va, dx if inside else 0.0, dy))
        tag, fallback = None, None
        for spot in spots:
            t = tag_at(rank, color, *spot)
            t.draw(renderer)  # sizes the bbox patch
            bb = t.get_bbox_patch().get_window_extent(renderer)
            fits = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
            if fits and not any(bb.overlaps(p) for p in placed):
                tag = t
                placed.append(bb)
                break
            if fallback is None and fits:
                fallback = spot
            t.remove()
        if tag is None:  # nowhere free: the first spot inside the picture
            tag = tag_at(rank, color, *(fallback or spots[-1]))
        tags.append(tag)
    return tags


def qualitative_figure(image, boxes, objectness, class_names: Sequence[str], students: Mapping[str, object],
                       labels, num_proposals: int = 5, top_k: int = 3, boxes_frame: Optional[tuple] = None,
                       title: Optional[str] = None, caption: bool = True) -> Figure:
    """The paper's qualitative figure for one image (see plot_qualitative)."""
    rgb = _load_image(image)
    h, w = rgb.shape[:2]
    b = to_numpy(boxes, "boxes")
    if b.ndim != 2 or b.shape[1] < 4:
        raise ValueError(f"boxes: expected N x 4 (x1, y1, x2, y2), got shape {b.shape}")
    b = b[:, :4].copy()
    check_finite(b, "boxes")
    obj = _vector(objectness, "objectness", b.shape[0])
    names = [str(n) for n in class_names]
    if not students:
        raise ValueError("students: give at least one student's scores")
    scores = {str(k): _vector(v, f"scores of {k!r}", len(names)) for k, v in students.items()}
    gt = _vector(labels, "labels", len(names))
    if not np.isin(gt, (0.0, 1.0)).all():
        raise ValueError("labels: must be 0 or 1 per class")
    if boxes_frame is not None:
        fw, fh = boxes_frame
        b[:, [0, 2]] *= w / float(fw)
        b[:, [1, 3]] *= h / float(fh)

    width, cols = 6.4, len(scores)
    head = max(_wrap(k, width / cols - 0.15, 9, bold=True).count("\n") + 1 for k in scores)
    # the figure's height follows the image's aspect ratio, so the image fills its panel unstretched
    img_h = (width - 0.2) * h / w
    key_h = 0.3
    text_h = 0.2 + 0.17 * head + 0.25 * top_k
    title_h = 0.12 + 0.19 * (_wrap(title, width - 0.2, 10).count("\n") + 1) if title else 0.1
    cap_lines = 3 if caption else 0
    cap_h = 0.14 * cap_lines + (0.1 if caption else 0.0)
    total = img_h + key_h + text_h + title_h + cap_h
    fig = Figure(figsize=(width, total), dpi=100)
    grid = fig.add_gridspec(3, cols, height_ratios=[img_h, key_h, text_h], hspace=0.0, wspace=0.05,
                            left=0.1 / width, right=1 - 0.1 / width, top=1 - title_h / total,
                            bottom=cap_h / total)
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    top = np.argsort(-obj, kind="stable")[:num_proposals]
    colors = [BOX_COLORS[i % len(BOX_COLORS)] for i in range(len(top))]
    for r, color in list(zip(top, colors))[::-1]:  # the best drawn last, on top
        x1, y1, x2, y2 = b[r]
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, lw=1.8, ec=color))
    if title:
        fig.suptitle(_wrap(title, width - 0.2, 10), fontsize=10, y=1 - 0.06 / total, va="top")
    # the key: each tag's objectness, in rank order
    kax = fig.add_subplot(grid[1, :])
    kax.set_axis_off()
    handles = [Rectangle((0, 0), 1, 1, fc=c, ec="none") for c in colors]
    kax.legend(handles, [f"{k}: {obj[r]:.2f}" for k, r in enumerate(top, start=1)], loc="center",
               ncol=len(top), fontsize=8, frameon=False, handlelength=1.0, columnspacing=1.2)
    _place_tags(fig, ax, [b[r] + np.array([-0.5, -0.5, 0.5, 0.5]) for r in top], colors)
    for col, (head_text, s) in enumerate(scores.items()):
        tax = fig.add_subplot(grid[2, col])
        tax.set_axis_off()
        tax.text(0.5, 1.0, _wrap(head_text, width / cols - 0.15, 9, bold=True), ha="center", va="top", fontsize=9,
                 fontweight="bold", transform=tax.transAxes)
        y0 = 1.0 - (0.17 * head + 0.12) / text_h
        for i, c in enumerate(np.argsort(-s, kind="stable")[:top_k]):
            tax.text(0.5, y0 - 0.25 * i / text_h, f"{names[c]} ({s[c]:.2f})", ha="center", va="top", fontsize=10,
                     color=CORRECT if gt[c] else WRONG, transform=tax.transAxes)
    if caption:
        fig.text(0.5, 0.5 * cap_h / total,
                 f"Boxes: the {len(top)} proposals the teacher (WSDDN) weighs most, numbered by rank; the key gives\n"
                 "each one's objectness (the teacher's detection-stream score summed over classes). Below:\n"
                 f"each student's top {top_k} labels and probabilities; blue = in the ground truth, red = not.",
                 ha="center", va="center", fontsize=7.5)
    return fig


def plot_qualitative(image, boxes, objectness, class_names: Sequence[str], students: Mapping[str, object], labels,
                     out_path, num_proposals: int = 5, top_k: int = 3, boxes_frame: Optional[tuple] = None,
                     title: Optional[str] = None, caption: bool = True) -> Path:
    """The paper's qualitative figure for one image.

    Top: the image, unstretched, with its ``num_proposals`` proposals of highest teacher
    objectness (inclusive x1, y1, x2, y2 boxes), numbered by rank, and a key giving each
    one's objectness. Bottom: for each of ``students`` ({name: scores per class}) its
    ``top_k`` labels, blue when the label is in the ground truth and red otherwise.
    ``boxes_frame=(width, height)`` gives the frame the boxes are expressed in (e.g.
    (672, 672) for datalist boxes) when it differs from the image's size; they are
    rescaled to the image. ``caption`` adds lines that say what the numbers and the
    colours mean, so the picture reads on its own.
    """
    return _save(qualitative_figure(image, boxes, objectness, class_names, students, labels, num_proposals, top_k,
                                    boxes_frame, title, caption), out_path)


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


def pr_comparison_figure(models: Mapping[str, object], labels, class_names: Optional[Sequence[str]] = None,
                         title: Optional[str] = None, ncols: int = 2, ap_mode: str = "standard",
                         styles: Optional[Mapping[str, dict]] = None) -> Figure:
    """Per class, every model's precision-recall curve on one panel, its AP in the legend;
    a last panel pools all (image, class) pairs, its legend giving each model's pooled AP
    and mAP. ``models``: {name: scores [images, classes]}, all on the same images and
    ``labels``; ``styles``: matplotlib line keywords per name (a model without one takes
    the next colour)."""
    if not models:
        raise ValueError("models: give at least one model's scores")
    pairs = {str(k): scores_and_labels(v, labels) for k, v in models.items()}
    y = next(iter(pairs.values()))[1]
    n_cls = y.shape[1]
    for k, (s, _) in pairs.items():
        if s.shape != y.shape:
            raise ValueError(f"models: the scores of {k!r} have shape {s.shape}, the labels {y.shape}")
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(n_cls)]
    if len(names) != n_cls:
        raise ValueError(f"class_names: {len(names)} names for {n_cls} classes")
    if not y.any():
        raise ValueError("labels: no class has a positive; precision-recall curves are undefined")
    panels = n_cls + 1
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    title_lines = _wrap(title, 4.0 * ncols, 11).count("\n") + 1 if title else 0
    top = 0.2 * title_lines + 0.15
    fig = Figure(figsize=(4.0 * ncols, 3.4 * nrows + top), dpi=100)
    style, free = {}, 0
    for k in pairs:
        style[k] = {"lw": 1.4}
        style[k].update((styles or {}).get(k, {}))
        if "color" not in style[k]:
            style[k]["color"] = f"C{free}"
            free += 1
    aps = {k: average_precision(s, y, ap_mode) for k, (s, _) in pairs.items()}

    def curve(ax, sc, lab, label, kw):
        prec, rec, _ = precision_recall_at_ranks(sc, lab)
        ax.step(np.concatenate(([0.0], rec)), np.concatenate(([1.0], prec)), where="post", label=label, **kw)

    for k in range(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        if k < n_cls:
            ax.set_title(f"class {names[k]}", fontsize=9)
            if y[:, k].any():
                for m, (s, _) in pairs.items():
                    curve(ax, s[:, k], y[:, k], f"{m}: AP {100 * aps[m][k]:.1f}", style[m])
            else:
                ax.text(0.5, 0.5, "no positives", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_title("all classes pooled (legend: pooled AP / mAP)", fontsize=9)
            for m, (s, _) in pairs.items():
                pooled = average_precision(s.reshape(-1), y.reshape(-1), ap_mode)
                curve(ax, s.reshape(-1), y.reshape(-1),
                      f"{m}: {100 * pooled:.1f} / {100 * float(np.nanmean(aps[m])):.1f}", style[m])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        if ax.get_lines():
            ax.legend(loc="lower left", fontsize=6.5, framealpha=0.85)
    if title:
        fig.suptitle(_wrap(title, 4.0 * ncols, 11), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - top / (3.4 * nrows + top)))
    return fig


def plot_pr_comparison(models: Mapping[str, object], labels, out_path, class_names: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, ncols: int = 2, ap_mode: str = "standard",
                       styles: Optional[Mapping[str, dict]] = None) -> Path:
    """Writes pr_comparison_figure as PNG."""
    return _save(pr_comparison_figure(models, labels, class_names, title, ncols, ap_mode, styles), out_path)


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


def training_curves_figure(csv_paths, x: str = "iter", columns: Optional[Sequence[str]] = None, ncols: int = 3,
                           log_scale: Sequence[str] = ("lr",), title: Optional[str] = None, smooth: int = 0,
                           omit: Sequence[str] = ("img_per_s",), captions: Optional[Mapping[str, str]] = None,
                           labels: Optional[Sequence[str]] = None,
                           bands: Optional[Mapping[str, Tuple[str, str]]] = None) -> Figure:
    """The figure of plot_training_curves."""
    if isinstance(csv_paths, (str, Path)):
        csv_paths = [csv_paths]
    if labels is not None and len(labels) != len(csv_paths):
        raise ValueError(f"labels: {len(labels)} names for {len(csv_paths)} files")
    series = {}  # column -> [(file's name, x values, y values, file's data)]
    for i, p in enumerate(csv_paths):
        header, data = read_csv_log(p)
        if x not in data:
            raise ValueError(f"{p}: no {x!r} column (columns: {header})")
        for h in header:
            if h == x or np.isnan(data[h]).all() or (columns is not None and h not in columns):
                continue
            ok = ~np.isnan(data[h]) & ~np.isnan(data[x])
            series.setdefault(h, []).append((labels[i] if labels is not None else Path(p).stem, data[x][ok],
                                             data[h][ok], {k: v[ok] for k, v in data.items()}))
    if columns is not None:
        missing = [c for c in columns if c not in series]
        if missing:
            raise ValueError(f"columns: no numeric data for {missing} in {[str(p) for p in csv_paths]}")
        order = list(columns)
    else:
        order = [h for h in series if h not in omit and
                 any(len(ys) > 1 and np.ptp(ys) > 0 for _, _, ys, _ in series[h])] or list(series)
    if not order:
        raise ValueError(f"no numeric column besides {x!r} in {[str(p) for p in csv_paths]}")
    captions, bands = dict(captions or {}), dict(bands or {})
    ncols = max(1, min(ncols, len(order)))
    nrows = math.ceil(len(order) / ncols)
    panel_w = 3.4 if not captions else 4.0
    # a title is never wider than the figure: a figure of one panel widens, a long title wraps
    width = max(panel_w * ncols, 6.4 if title else 0.0)
    head = {name: _wrap(captions[name], width / ncols - 0.4, 7) for name in order if name in captions}
    cap_lines = max((t.count("\n") + 1 for t in head.values()), default=0)
    title_text = _wrap(title, width - 0.3, 10) if title else ""
    title_h = 0.2 * (title_text.count("\n") + 1) + 0.15 if title else 0.0
    # files named the same in every panel: one legend for the figure, under the panels
    stems = {tuple(st for st, _, _, _ in series[name]) for name in order}
    shared = len(stems) == 1 and len(next(iter(stems))) > 1
    legend_h = 0.22 * len(next(iter(stems))) + 0.1 if shared else 0.0
    panel_h = 2.6 + 0.13 * cap_lines
    total = panel_h * nrows + title_h + legend_h
    fig = Figure(figsize=(width, total), dpi=100)
    for k, name in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for i, (stem, xs, ys, data) in enumerate(series[name]):
            label = stem if len(series[name]) > 1 else None
            color = f"C{i}"
            if name in bands:
                lo, hi = (data[c] if c in data else np.full(len(xs), np.nan) for c in bands[name])
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            if smooth > 1 and len(xs) > smooth:
                ax.plot(xs, ys, lw=0.6, color=color, alpha=0.25)
                ax.plot(xs, _running_mean(ys, smooth), lw=1.4, color=color, label=label)
            else:
                ax.plot(xs, ys, lw=1.2, color=color, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if name in log_scale and all((ys > 0).all() for _, _, ys, _ in series[name]):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # the values themselves, not an offset above the axis
        if len(series[name]) > 1 and not shared:
            ax.legend(fontsize=7)
        note = f" (running mean of {smooth}, raw faint)" if smooth > 1 and len(series[name][0][1]) > smooth else ""
        ax.set_title(name + note + ("\n" + head[name] if name in head else ""), fontsize=8 if name not in head else 7)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title_text, fontsize=10)
    if shared:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / total, 1, 1))
    return fig


def plot_training_curves(csv_paths, out_path, x: str = "iter", columns: Optional[Sequence[str]] = None,
                         ncols: int = 3, log_scale: Sequence[str] = ("lr",), title: Optional[str] = None,
                         smooth: int = 0, omit: Sequence[str] = ("img_per_s",),
                         captions: Optional[Mapping[str, str]] = None, labels: Optional[Sequence[str]] = None,
                         bands: Optional[Mapping[str, Tuple[str, str]]] = None) -> Path:
    """One subplot per numeric column of CSV logs (e.g. the trainer's log.csv and eval.csv), against ``x``.

    Several files may be given: a column present in more than one is drawn in one
    subplot with a line per file, named in the legend by ``labels`` (default: the file
    names). ``columns`` restricts the plot; ``log_scale`` names columns drawn with a
    logarithmic y axis (when all their values are positive). ``smooth`` > 1 draws the
    running mean of that many points over the raw values (drawn faint). Without
    ``columns``, the columns in ``omit`` (throughput: it plots the machine's load) and
    columns that never change (a fixed learning rate) are left out. ``captions``: a line
    under a column's subplot title saying what it shows; ``bands``: {column: (low
    column, high column)} shades the range between two other columns behind it.
    """
    return _save(training_curves_figure(csv_paths, x, columns, ncols, log_scale, title, smooth, omit, captions,
                                        labels, bands), out_path)
