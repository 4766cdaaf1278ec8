"""Caffe's geometry rules, written once for Python.

Pooling output sizes and windows, where PyTorch's pooling gives Caffe's result, the SPP
pyramid's per-level kernel/pad/stride, RoI levels, ROIPooling's bins, the RoI rows' shape
and values, WsdRoigen / WsdRoigenSingleScale rows, the Scale layer's broadcast shape and
the xavier/msra fillers' fans. Used by the reference ops, the fake kernels, mlic.caffe's
layers and the ports. The C++ place of the rules the kernels need is
csrc/ops/frontend.cpp (output sizes, levels, checks) and csrc/ops/device/*.cuh (windows,
RoI bins); the fake kernels' shapes are checked against the kernels' outputs and the
reference ops against the kernels, which keeps the two languages equal.

Nothing here imports the rest of the package.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]

# Largest |coordinate * spatial_scale| of a RoI: the kernels round coordinates to int
# and add extents, which must not overflow int32 (csrc: kRoiCoordLimit).
ROI_COORD_LIMIT = float(1 << 29)
# Most pyramid levels the SPP rule accepts (2^15 bins per side at the last).
MAX_PYRAMID_HEIGHT = 16


class PoolLevel(NamedTuple):
    """One level of Caffe pooling (csrc: struct PoolLevel): kernel, stride, padding and
    output size per axis."""

    kh: int
    kw: int
    sh: int
    sw: int
    pad_h: int
    pad_w: int
    oh: int
    ow: int


def pair(v: IntPair, name: str) -> Tuple[int, int]:
    """An int or an (h, w) pair -> (h, w)."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"`{name}` must be an int or an (h, w) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ----------------------------------------------------------------------------- Caffe pooling


def pool_output_size(size: int, kernel: int, stride: int, pad: int, any_pad: bool) -> int:
    """Caffe's pooled size along one axis: ceil((size + 2*pad - kernel) / stride) + 1, then,
    when the layer has padding on either axis (`any_pad`: Caffe tests pad_h || pad_w),
    drop a last window that would start in the padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_window(o: int, kernel: int, stride: int, pad: int, size: int) -> Tuple[int, int, int]:
    """Window of output cell `o` along one axis: (start, end) clipped to [0, size), and the
    extent Caffe's AVE divides by (the window clipped to [-pad, size + pad) only)."""
    start = o * stride - pad
    end = min(start + kernel, size + pad)
    extent = end - start
    return max(start, 0), min(end, size), extent


def pool2d_level(height: int, width: int, kernel_size: IntPair, stride: IntPair, pad: IntPair) -> PoolLevel:
    """Caffe's Pooling layer geometry; refuses what Caffe refuses (pad >= kernel) and an
    empty output (Caffe accepts an input smaller than the kernel: one clipped window)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(pad, "pad")
    if kh <= 0 or kw <= 0:
        raise ValueError(f"`kernel_size` must be positive, got {(kh, kw)}")
    if sh <= 0 or sw <= 0:
        raise ValueError(f"`stride` must be positive, got {(sh, sw)}")
    if not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(f"`pad` must be in [0, kernel_size), got pad {(ph, pw)} for kernel {(kh, kw)}")
    any_pad = ph > 0 or pw > 0
    oh, ow = pool_output_size(height, kh, sh, ph, any_pad), pool_output_size(width, kw, sw, pw, any_pad)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {height}x{width} with kernel {(kh, kw)}, stride {(sh, sw)} and pad {(ph, pw)} "
                         f"gives an empty output")
    return PoolLevel(kh, kw, sh, sw, ph, pw, oh, ow)


def spp_level(size: int, level: int) -> Tuple[int, int]:
    """(kernel, pad) of Caffe SPP's pooling at pyramid level `level` along one axis; the
    stride equals the kernel."""
    bins = 1 << level
    kernel = -(-size // bins)
    pad = (kernel * bins - size + 1) // 2
    return kernel, pad


def spp_levels(height: int, width: int, pyramid_height: int) -> List[PoolLevel]:
    """Caffe's SPP layer: level l pools with 2^l bins per axis. Caffe refuses an input for
    which some level needs padding not smaller than its kernel."""
    if not 1 <= pyramid_height <= MAX_PYRAMID_HEIGHT:
        raise ValueError(f"`pyramid_height` must be in [1, {MAX_PYRAMID_HEIGHT}], got {pyramid_height}")
    out = []
    for level in range(pyramid_height):
        (kh, ph), (kw, pw) = spp_level(height, level), spp_level(width, level)
        if ph >= kh or pw >= kw:
            bins = 1 << level
            raise ValueError(
                f"level {level} of the pyramid ({bins}x{bins} bins) needs padding ({ph}, {pw}) not smaller than its "
                f"kernel ({kh}, {kw}) for input {height}x{width}; Caffe's SPP refuses this input (use fewer levels)")
        any_pad = ph > 0 or pw > 0
        out.append(PoolLevel(kh, kw, kh, kw, ph, pw, pool_output_size(height, kh, kh, ph, any_pad),
                             pool_output_size(width, kw, kw, pw, any_pad)))
    return out


def _torch_pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """PyTorch's ceil_mode rule: it drops a last window starting in the right padding also
    when the layer has no padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def torch_pool_matches_caffe(height: int, width: int, kernel_size: IntPair, stride: IntPair,
                             pad: IntPair) -> bool:
    """True when F.max_pool2d / F.avg_pool2d(ceil_mode=True, count_include_pad=True) give
    Caffe's Pooling result: the same output size, pad <= kernel/2 (PyTorch's limit), and the
    kernel fits the padded input. The window bounds, the clipping, the AVE divisor (window
    clipped to [-pad, size + pad)) and the MAX tie rule (first maximum) are the same."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(pad, "pad")
    any_pad = ph > 0 or pw > 0
    for size, k, st, p in ((height, kh, sh, ph), (width, kw, sw, pw)):
        if k < 1 or st < 1 or p < 0 or size + 2 * p < k or p > k // 2:
            return False
        if pool_output_size(size, k, st, p, any_pad) != _torch_pool_output_size(size, k, st, p):
            return False
    return True


def pool_mode(mode: str) -> str:
    """'max' or 'ave' (Caffe's MAX / AVE)."""
    m = {"max": "max", "MAX": "max", "ave": "ave", "AVE": "ave", "avg": "ave"}.get(mode)
    if m is None:
        raise ValueError(f"`mode` must be \"max\" or \"ave\", got {mode!r}")
    return m


# ----------------------------------------------------------------------------- RoIs


def roi_levels(levels) -> Tuple[List[int], List[int]]:
    """RoI pooling grids: ints n (n x n) or (h, w) pairs -> (heights, widths)."""
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


def check_rois_shape(shape: Sequence[int], what: str = "`rois`") -> None:
    """RoI rows as ROIPooling reads them: 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5]
    (score 1)."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[1] not in (5, 6):
        raise ValueError(f"{what} must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape {shape}")


def c_round(x: torch.Tensor) -> torch.Tensor:
    """C's round(): half away from zero, exact (no x + 0.5 rounding error)."""
    t = torch.trunc(x)
    frac = x - t  # exact in binary floating point
    return t + torch.where(frac.abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def roi_bins(rois: torch.Tensor, pooled_h: int, pooled_w: int, spatial_scale: float, height: int, width: int,
             dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROIPooling's bins of every RoI row: the corners times spatial_scale rounded with C's
    round, the extent x2 - x1 + 1 (at least 1), bin p spanning [floor(p * e / pooled),
    ceil((p + 1) * e / pooled)) from the rounded start, clipped to [0, size]. The arithmetic
    is in `dtype` (Caffe's Dtype). Returns int64 (hstart, hend) [K, pooled_h] and (wstart,
    wend) [K, pooled_w] on the CPU."""
    r = rois.detach().to(device="cpu", dtype=dtype)
    x1, y1, x2, y2 = c_round(r[:, 1:5] * torch.tensor(spatial_scale, dtype=dtype)).to(torch.int64).unbind(1)

    def axis(start, end, pooled, size):
        extent = torch.clamp(end - start + 1, min=1)
        bin_size = extent.to(dtype) / torch.tensor(float(pooled), dtype=dtype)
        p = torch.arange(pooled, dtype=dtype)
        lo = torch.floor(p[None] * bin_size[:, None]).long() + start[:, None]
        hi = torch.ceil((p[None] + 1) * bin_size[:, None]).long() + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)

    hstart, hend = axis(y1, y2, pooled_h, height)
    wstart, wend = axis(x1, x2, pooled_w, width)
    return hstart, hend, wstart, wend


def check_roi_values(rois: torch.Tensor, num_images: int, spatial_scale: float = 1.0, what: str = "rois") -> None:
    """RoI rows (batch, x1, y1, x2, y2[, score]) that ROIPooling can use: finite values, a
    batch index that truncates into [0, num_images), and coordinates whose scaled
    magnitude stays below ROI_COORD_LIMIT. Reads the values (a device sync on a GPU)."""
    if rois.shape[0] == 0:
        return
    r = rois.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(r).all(1)
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise ValueError(f"{what}: row {k} contains NaN or infinite values: {r[k].tolist()}")
    b = r[:, 0]
    bad = (b <= -1) | (b >= num_images)  # int() truncates toward zero: (-1, N) -> [0, N-1]
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise ValueError(f"{what}: row {k} has batch index (column 0) {float(b[k])}, out of range for features "
                         f"with N={num_images}")
    mag = r[:, 1:5].abs() * abs(spatial_scale)
    big = (mag >= ROI_COORD_LIMIT).any(1)
    if bool(big.any()):
        k = int(big.nonzero()[0])
        raise ValueError(f"{what}: row {k} has coordinates {r[k, 1:5].tolist()}; times spatial_scale "
                         f"{spatial_scale} they must stay below {ROI_COORD_LIMIT:.0f} in magnitude")


def wsd_roigen_shape(list_roi_shape: Sequence[int]) -> Tuple[int, int]:
    """WsdRoigen's top shape (N*B, 6) for a list_roi of shape [N, 5B] (or N x 5B x 1 x 1)."""
    shape = tuple(list_roi_shape)
    if len(shape) < 1:
        raise ValueError(f"list_roi must be [N, 5B], got shape {shape}")
    per = math.prod(shape[1:])
    if per % 5:
        raise ValueError(f"list_roi has {per} values per image, not a multiple of 5B (x1 y1 x2 y2 s per box)")
    return shape[0] * (per // 5), 6


def _list_roi_boxes(list_roi: torch.Tensor) -> torch.Tensor:
    """list_roi [N, 5B] (or N x 5B x 1 x 1) -> boxes [N, B, 5] (no gradient: they are data)."""
    wsd_roigen_shape(list_roi.shape)
    flat = list_roi.detach().reshape(list_roi.shape[0], -1)
    return flat.reshape(flat.shape[0], flat.shape[1] // 5, 5)


def wsd_roigen(list_roi: torch.Tensor) -> torch.Tensor:
    """WsdRoigen: list_roi [N, 5B] -> rois [N*B, 6] rows (image index, x1, y1, x2, y2,
    score), image-major."""
    boxes = _list_roi_boxes(list_roi)
    n, b = boxes.shape[0], boxes.shape[1]
    img = torch.arange(n, dtype=boxes.dtype, device=boxes.device).view(n, 1, 1).expand(n, b, 1)
    return torch.cat([img, boxes], 2).reshape(n * b, 6)


def check_origin_scale(origin_scale: float) -> None:
    """WsdRoigenSingleScale divides by origin_scale."""
    if origin_scale == 0:
        raise ValueError("origin_scale must not be 0")


def single_scale_rois(rois: torch.Tensor, single_scale: float, origin_scale: float) -> torch.Tensor:
    """WsdRoigenSingleScale's coordinates: floor(single_scale * x / origin_scale) in
    Caffe's float (float64 for float64 rois); image index and score unchanged."""
    check_origin_scale(origin_scale)
    cdt = torch.float64 if rois.dtype == torch.float64 else torch.float32
    s = torch.tensor(single_scale, dtype=cdt, device=rois.device)
    o = torch.tensor(origin_scale, dtype=cdt, device=rois.device)
    c = torch.floor(s * rois[:, 1:5].detach().to(cdt) / o).to(rois.dtype)
    return torch.cat([rois[:, :1].detach(), c, rois[:, 5:].detach()], 1)


# ----------------------------------------------------------------------------- Scale, fillers


def scale_view_shape(x_shape: Sequence[int], axis: int, scale_shape: Sequence[int], what: str = "Scale") -> tuple:
    """Caffe's Scale layer: a scale blob covering axes [axis, axis + scale.dim()) of the
    bottom, broadcast over the others -> the shape to view the scale as."""
    x_shape, scale_shape = tuple(x_shape), tuple(scale_shape)
    span = x_shape[axis: axis + len(scale_shape)]
    if span != scale_shape:
        raise ValueError(f"{what}: scale shape {list(scale_shape)} does not match bottom {list(x_shape)} "
                         f"from axis {axis}")
    return (1,) * axis + scale_shape + (1,) * (len(x_shape) - axis - len(scale_shape))


def filler_fan(shape: Sequence[int], variance_norm: str = "FAN_IN") -> float:
    """The n of Caffe's xavier and msra fillers: fan_in = count / shape[0], fan_out =
    count / shape[1], or their mean (variance_norm FAN_IN, FAN_OUT, AVERAGE)."""
    shape = tuple(shape)
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    fans = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2.0}
    if variance_norm not in fans:
        raise ValueError(f"variance_norm must be FAN_IN, FAN_OUT or AVERAGE, got {variance_norm!r}")
    return fans[variance_norm]


def xavier_(t: torch.Tensor, variance_norm: str = "FAN_IN") -> torch.Tensor:
    """Caffe's xavier filler in place: U(-sqrt(3/n), sqrt(3/n)), n from :func:`filler_fan`."""
    if t.numel() == 0:
        return t
    a = math.sqrt(3.0 / filler_fan(t.shape, variance_norm))
    with torch.no_grad():
        return t.uniform_(-a, a)


def msra_(t: torch.Tensor, variance_norm: str = "FAN_IN") -> torch.Tensor:
    """Caffe's msra filler in place: N(0, sqrt(2/n)), n from :func:`filler_fan`."""
    if t.numel() == 0:
        return t
    with torch.no_grad():
        return t.normal_(0.0, math.sqrt(2.0 / filler_fan(t.shape, variance_norm)))
