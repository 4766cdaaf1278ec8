"""Argument normalisation and output shapes shared by the eager wrappers, the fake
(meta) kernels used by torch.compile, and the NVRTC runtime path."""
import math
from typing import List, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]


def pair(v: IntPair, name: str) -> List[int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"`{name}` must be an int or a pair of ints, got {v!r}")
        return [int(v[0]), int(v[1])]
    return [int(v), int(v)]


def roi_levels(levels) -> Tuple[List[int], List[int]]:
    """levels: ints n (n x n grids) or (h, w) pairs -> (heights, widths)."""
    if isinstance(levels, int):
        levels = [levels]
    hs, ws = [], []
    for lv in levels:
        h, w = pair(lv, "levels")
        if h <= 0 or w <= 0:
            raise ValueError(f"`levels` entries must be positive, got {lv!r}")
        hs.append(h)
        ws.append(w)
    if not hs:
        raise ValueError("`levels` must not be empty")
    return hs, ws


def caffe_pooled(size: int, k: int, s: int, p: int, any_pad: bool = None) -> int:
    """Caffe's output size; the last-window correction applies when the layer has padding
    on either axis (`any_pad`, default: this axis's)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if (p > 0 if any_pad is None else any_pad) and (out - 1) * s >= size + p:
        out -= 1
    return out


def spp_level_params(H: int, W: int, pyramid_height: int) -> List[Tuple[int, int, int, int, int, int, int, int]]:
    """Per level (kh, kw, sh, sw, pad_h, pad_w, oh, ow) by Caffe's SPP rule."""
    if not 1 <= pyramid_height <= 16:
        raise ValueError(f"`pyramid_height` must be in [1, 16], got {pyramid_height}")
    out = []
    for level in range(pyramid_height):
        bins = 1 << level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        if ph >= kh or pw >= kw:
            raise ValueError(
                f"level {level} of the pyramid ({bins}x{bins} bins) needs padding ({ph}, {pw}) not smaller than "
                f"its kernel ({kh}, {kw}) for input {H}x{W}; Caffe's SPP refuses this input (use fewer levels)"
            )
        any_pad = ph > 0 or pw > 0
        out.append((kh, kw, kh, kw, ph, pw, caffe_pooled(H, kh, kh, ph, any_pad), caffe_pooled(W, kw, kw, pw, any_pad)))
    return out


def pool2d_level_params(H, W, kernel_size, stride, padding):
    k, s, p = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")
    for d in range(2):
        if k[d] <= 0 or s[d] <= 0:
            raise ValueError(f"`kernel_size` and `stride` must be positive, got {k} and {s}")
        if not 0 <= p[d] < k[d]:
            raise ValueError(f"`padding` must be in [0, kernel_size), got {p} for kernel {k}")
    any_pad = p[0] > 0 or p[1] > 0
    oh, ow = caffe_pooled(H, k[0], s[0], p[0], any_pad), caffe_pooled(W, k[1], s[1], p[1], any_pad)
    if oh < 1 or ow < 1:  # Caffe accepts an input smaller than the kernel, not an empty output
        raise ValueError(f"input {H}x{W} with kernel {k}, stride {s} and padding {p} gives an empty output")
    return [(k[0], k[1], s[0], s[1], p[0], p[1], oh, ow)]


def pool_mode(mode: str) -> int:
    if mode in ("max", "MAX"):
        return 0
    if mode in ("ave", "AVE", "avg"):
        return 1
    raise ValueError(f"`mode` must be \"max\" or \"ave\", got {mode!r}")


def _check_float(t: torch.Tensor, op: str, name: str):
    if not t.is_floating_point():
        raise ValueError(f"{op}: `{name}` must be a floating-point tensor, got {t.dtype}")


def _check_same(a, b, op, na, nb):
    if a.device != b.device:
        raise ValueError(f"{op}: `{na}` and `{nb}` must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: `{na}` and `{nb}` must have the same dtype, got {a.dtype} and {b.dtype}")


def check_roi_inputs(features: torch.Tensor, rois: torch.Tensor, op: str):
    if features.dim() != 4:
        raise ValueError(f"{op}: `features` must be 4-D [N, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] not in (5, 6):
        raise ValueError(
            f"{op}: `rois` must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape {tuple(rois.shape)}"
        )
    _check_float(features, op, "features")
    _check_same(features, rois, op, "features", "rois")
    if any(s == 0 for s in features.shape):
        raise ValueError(f"{op}: `features` has an empty dimension, shape {tuple(features.shape)}")


def check_roi_values(rois: torch.Tensor, n: int, spatial_scale: float, op: str):
    if rois.shape[0] == 0:
        return
    r = rois.detach().double()
    b = r[:, 0].trunc()
    stats = torch.stack([torch.isfinite(r).all().double(), b.min(), b.max(), r[:, 1:5].abs().max() * spatial_scale])
    ok, lo, hi, mag = stats.tolist()
    if ok != 1.0:
        raise ValueError(f"{op}: `rois` contains NaN or infinite values")
    if lo < 0 or hi >= n:
        raise ValueError(
            f"{op}: `rois` batch index (column 0) must lie in [0, {n}) for features with N={n}, "
            f"got values truncating to [{lo}, {hi}]"
        )
    if mag >= 1e9:
        raise ValueError(f"{op}: `rois` coordinates times spatial_scale must stay below 1e9 in magnitude, got {mag}")


def check_x4(x: torch.Tensor, op: str):
    if x.dim() != 4:
        raise ValueError(f"{op}: `x` must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    _check_float(x, op, "x")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{op}: `x` has an empty dimension, shape {tuple(x.shape)}")


def check_two_stream(cls: torch.Tensor, det: torch.Tensor, op: str):
    if cls.dim() != 3:
        raise ValueError(f"{op}: `cls_logits` must be 3-D [N, R, C], got shape {tuple(cls.shape)}")
    if det.dim() != 3:
        raise ValueError(f"{op}: `det_logits` must be 3-D [N, R, C], got shape {tuple(det.shape)}")
    if cls.shape != det.shape:
        raise ValueError(
            f"{op}: `cls_logits` and `det_logits` must have the same shape, got {tuple(cls.shape)} and "
            f"{tuple(det.shape)}"
        )
    _check_float(cls, op, "cls_logits")
    _check_same(cls, det, op, "cls_logits", "det_logits")
    if cls.shape[1] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one region (R, dim 1), got shape {tuple(cls.shape)}")
    if cls.shape[2] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one class (C, dim 2), got shape {tuple(cls.shape)}")
