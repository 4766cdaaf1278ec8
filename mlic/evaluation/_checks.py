"""Input conversion and validation shared by the metrics."""
from __future__ import annotations

import numpy as np


def to_numpy(x, name: str, dtype=np.float64) -> np.ndarray:
    """numpy array from a numpy array, torch tensor or nested sequence, as ``dtype``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name}: cannot be read as an array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name}: expected numbers, got an array of dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {idx}")


def scores_and_labels(scores, labels, ndim: int | tuple = 2):
    """Validated float64 scores and bool labels of equal shape."""
    s = to_numpy(scores, "scores")
    y = to_numpy(labels, "labels")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if s.ndim not in allowed:
        raise ValueError(f"scores: expected {' or '.join(map(str, allowed))} dimensions "
                         f"(images x classes), got shape {s.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {s.shape} vs {y.shape}")
    check_finite(s, "scores")
    check_finite(y, "labels")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]
        raise ValueError(f"labels: must be 0 or 1, found {bad.tolist()}")
    return s, y.astype(bool)
