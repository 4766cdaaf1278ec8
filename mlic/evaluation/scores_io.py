"""Per-image score files: ``(image path, scores[, labels])`` as .npz or .csv.

CSV layout: a header ``image,<class 1>,...,<class C>`` followed, when labels are
stored, by ``label:<class 1>,...``; one row per image. Scores are written with
``repr`` of the float64 value, so float32 and float64 scores read back exactly.
The .npz holds ``paths`` (str), ``scores`` (float), optionally ``labels`` (uint8)
and ``class_names`` (str).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mlic.evaluation._checks import check_finite, to_numpy

LABEL_PREFIX = "label:"


@dataclass
class ScoreFile:
    paths: list
    scores: np.ndarray
    labels: Optional[np.ndarray] = None
    class_names: Optional[list] = None


def _format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise ValueError(f"{path}: unknown score file type {suffix!r} (use .npz or .csv)")
    return suffix


def save_scores(path, image_paths: Sequence[str], scores, labels=None,
                class_names: Optional[Sequence[str]] = None) -> Path:
    """Write per-image scores (and labels) to ``path`` (.npz or .csv, chosen by the suffix)."""
    path = Path(path)
    kind = _format(path)
    image_paths = [str(p) for p in image_paths]
    s = to_numpy(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores: expected images x classes, got shape {s.shape}")
    if len(image_paths) != s.shape[0]:
        raise ValueError(f"image_paths: {len(image_paths)} paths for {s.shape[0]} rows of scores")
    check_finite(s, "scores")
    y = None
    if labels is not None:
        y = to_numpy(labels, "labels")
        if y.shape != s.shape:
            raise ValueError(f"scores and labels differ in shape: {s.shape} vs {y.shape}")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels: must be 0 or 1")
        y = y.astype(np.uint8)
    names = [str(n) for n in class_names] if class_names is not None else [f"class_{c}" for c in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"class_names: {len(names)} names for {s.shape[1]} classes")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".npz":
        arrays = {"paths": np.array(image_paths, dtype=str), "scores": s, "class_names": np.array(names, dtype=str)}
        if y is not None:
            arrays["labels"] = y
        with open(path, "wb") as f:  # a file object keeps numpy from appending another .npz
            np.savez(f, **arrays)
        return path
    for p in image_paths:
        if "\n" in p or "\r" in p:
            raise ValueError(f"image_paths: a path contains a line break: {p!r}")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"] + names + ([LABEL_PREFIX + n for n in names] if y is not None else []))
        for i, p in enumerate(image_paths):
            row = [p] + [repr(float(v)) for v in s[i]]
            if y is not None:
                row += [str(int(v)) for v in y[i]]
            w.writerow(row)
    return path


def load_scores(path) -> ScoreFile:
    """Read a file written by ``save_scores``; a malformed CSV row is an error naming the line."""
    path = Path(path)
    kind = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file not found: {path}")
    if kind == ".npz":
        with np.load(path, allow_pickle=False) as z:
            for key in ("paths", "scores"):
                if key not in z:
                    raise ValueError(f"{path}: missing array {key!r} (found {sorted(z.files)})")
            labels = z["labels"].astype(np.uint8) if "labels" in z else None
            names = [str(n) for n in z["class_names"]] if "class_names" in z else None
            return ScoreFile([str(p) for p in z["paths"]], z["scores"].astype(np.float64), labels, names)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "image":
        raise ValueError(f"{path}:1: expected a header starting with 'image'")
    header = rows[0][1:]
    n_lab = sum(h.startswith(LABEL_PREFIX) for h in header)
    names = header[: len(header) - n_lab]
    if n_lab not in (0, len(names)) or any(h.startswith(LABEL_PREFIX) for h in names):
        raise ValueError(f"{path}:1: expected the class columns, then optionally one '{LABEL_PREFIX}' column each")
    n_cls = len(names)
    paths, scores, labels = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 1 + n_cls + n_lab:
            raise ValueError(f"{path}:{line}: expected {1 + n_cls + n_lab} fields, got {len(row)}")
        try:
            vals = [float(v) for v in row[1:1 + n_cls]]
            labs = [int(v) for v in row[1 + n_cls:]]
        except ValueError as exc:
            raise ValueError(f"{path}:{line}: {exc}") from None
        if any(v not in (0, 1) for v in labs):
            raise ValueError(f"{path}:{line}: labels must be 0 or 1")
        paths.append(row[0])
        scores.append(vals)
        labels.append(labs)
    s = np.array(scores, dtype=np.float64).reshape(len(paths), n_cls)
    y = np.array(labels, dtype=np.uint8).reshape(len(paths), n_cls) if n_lab else None
    return ScoreFile(paths, s, y, names)
